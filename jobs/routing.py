from django.urls import path

from jobs import consumers

websocket_urlpatterns = [
    path("ws/workspaces/<str:workspace>/jobs/", consumers.WorkspaceJobsConsumer.as_asgi()),
    path("ws/workspaces/<str:workspace>/jobs/<str:name>/logs/", consumers.JobLogConsumer.as_asgi()),
]
