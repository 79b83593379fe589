from django.urls import path

from tracking import artifacts, rest

# Under /workspaces/<workspace>/mlflow/: the workspace's tracking URI.
urlpatterns = [
    path("api/2.0/mlflow/<path:name>", rest.endpoint, name="mlflow-api"),
    path("api/2.0/mlflow-artifacts/artifacts", artifacts.listing, name="mlflow-artifacts"),
    path(
        "api/2.0/mlflow-artifacts/artifacts/<path:path>",
        artifacts.artifact,
        name="mlflow-artifact",
    ),
]
