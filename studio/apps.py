from typing import Any

from django.apps import AppConfig


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Studio core"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from studio import schema  # noqa: F401 - registers the OpenAPI auth extension
        from studio.models import Invitation
        from studio.services import accept_invitations

        def account_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
            """An account made (or made active) takes up the invitations to its name."""
            if (
                instance.is_active
                and Invitation.objects.filter(username=instance.get_username()).exists()
            ):
                accept_invitations(instance)

        post_save.connect(account_saved, sender=get_user_model(), weak=False)
