from django.urls import path

from tracking import consumers

websocket_urlpatterns = [
    path(
        "ws/workspaces/<str:workspace>/runs/<str:run_id>/metrics/",
        consumers.RunMetricsConsumer.as_asgi(),
    ),
]
