from rest_framework.routers import SimpleRouter

from endpoints.api.batch import BatchDeploymentViewSet, BatchEndpointViewSet
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
urlpatterns = router.urls
