from django.urls import path

from tracking import rest

# Under /workspaces/<workspace>/mlflow/: the workspace's tracking URI.
urlpatterns = [
    path("api/2.0/mlflow/<path:name>", rest.endpoint, name="mlflow-api"),
]
