from django.apps import AppConfig


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Studio core"

    def ready(self) -> None:
        from studio import schema  # noqa: F401 - registers the OpenAPI auth extension
