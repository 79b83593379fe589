from django.urls import path

from endpoints import consumers

websocket_urlpatterns = [
    path(
        "ws/workspaces/<str:workspace>/online-endpoints/<str:endpoint>/deployments/<str:name>/logs/",
        consumers.DeploymentLogConsumer.as_asgi(),
    ),
]
