from django.apps import AppConfig


class EndpointsConfig(AppConfig):
    name = "endpoints"
    verbose_name = "Endpoints"

    def ready(self) -> None:
        # The router drops an endpoint's cached routing table when it changes here.
        from endpoints import router  # noqa: F401
