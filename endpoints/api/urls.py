from django.urls import path
from rest_framework.routers import SimpleRouter

from endpoints.api.batch import BatchDeploymentViewSet, BatchEndpointViewSet
from endpoints.api.io import CodeView, ModelFilesView, ModelFileView
from endpoints.api.router import TableView, TrafficView
from endpoints.api.views import OnlineDeploymentViewSet, OnlineEndpointViewSet

WORKSPACE = r"workspaces/(?P<workspace>[^/]+)"
router = SimpleRouter()
router.register(f"{WORKSPACE}/online-endpoints", OnlineEndpointViewSet, basename="online-endpoint")
router.register(
    f"{WORKSPACE}/online-endpoints/(?P<endpoint>[^/]+)/deployments",
    OnlineDeploymentViewSet,
    basename="online-deployment",
)
router.register(f"{WORKSPACE}/batch-endpoints", BatchEndpointViewSet, basename="batch-endpoint")
router.register(
    f"{WORKSPACE}/batch-endpoints/(?P<endpoint>[^/]+)/deployments",
    BatchDeploymentViewSet,
    basename="batch-deployment",
)
urlpatterns = [
    *router.urls,
    # For a deployment's pods (its own token): what its ConfigMap could not carry.
    path("deployment-io/code", CodeView.as_view(), name="deployment-io-code"),
    path("deployment-io/model/files/", ModelFilesView.as_view(), name="deployment-io-files"),
    path(
        "deployment-io/model/files/<path:path>", ModelFileView.as_view(), name="deployment-io-file"
    ),
    # For the routers inside clusters (their cluster's token): routing and counts.
    path("router/endpoints/<str:name>/", TableView.as_view(), name="router-table"),
    path("router/traffic/", TrafficView.as_view(), name="router-traffic"),
]
