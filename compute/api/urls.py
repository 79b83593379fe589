from rest_framework.routers import SimpleRouter

from compute.api.clusters import ClusterViewSet
from compute.api.views import ComputeTargetViewSet, InstanceTypeViewSet

router = SimpleRouter()
router.register("clusters", ClusterViewSet, basename="cluster")
router.register("instance-types", InstanceTypeViewSet, basename="instance-type")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/computes", ComputeTargetViewSet, basename="compute"
)
urlpatterns = router.urls
