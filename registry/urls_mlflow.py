from django.urls import re_path

from registry import mlflow

# Under /workspaces/<workspace>/mlflow/, before the tracking routes: MLflow's registry.
urlpatterns = [
    re_path(
        r"^api/2\.0/mlflow/(?P<name>(?:registered-models|model-versions)/[^?]*)$",
        mlflow.endpoint,
        name="mlflow-registry",
    ),
]
