from rest_framework.routers import SimpleRouter

from compute.api.clusters import ClusterViewSet
from compute.api.instance_types import ClusterInstanceTypeViewSet
from compute.api.views import ComputeTargetViewSet, InstanceTypeViewSet

router = SimpleRouter()
router.register("clusters", ClusterViewSet, basename="cluster")
router.register(
    r"clusters/(?P<cluster>[^/]+)/instance-types",
    ClusterInstanceTypeViewSet,
    basename="cluster-instance-type",
)
router.register("instance-types", InstanceTypeViewSet, basename="instance-type")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/computes", ComputeTargetViewSet, basename="compute"
)
urlpatterns = router.urls
