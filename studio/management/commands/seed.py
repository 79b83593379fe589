"""What a first visit needs: workspace `demo`, compute `local`, instance types, an admin."""

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from studio import services
from studio.access import IT_OPS_GROUP
from studio.env import env_str
from studio.models import Membership, Role, Workspace


class Command(BaseCommand):
    help = "Create the demo workspace, the local compute, instance types and an admin (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        Group.objects.get_or_create(name=IT_OPS_GROUP)
        workspace, _ = Workspace.objects.get_or_create(
            name="demo", defaults={"description": "A workspace to try the studio in."}
        )
        services.set_up(workspace)
        users = get_user_model()
        if not users.objects.filter(is_superuser=True).exists():
            password = env_str("STUDIO_ADMIN_PASSWORD")
            generated = not password
            password = password or secrets.token_urlsafe(12)
            admin = users.objects.create_superuser("admin", "", password)
            Membership.objects.get_or_create(
                workspace=workspace, user=admin, defaults={"role": Role.OWNER}
            )
            if generated:
                self.stdout.write(
                    self.style.WARNING(
                        f"Created user 'admin' with password: {password}\n"
                        "It is shown only this once; set STUDIO_ADMIN_PASSWORD to choose it."
                    )
                )
            else:
                self.stdout.write(
                    "Created user 'admin' with the password in STUDIO_ADMIN_PASSWORD."
                )
