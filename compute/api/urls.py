from rest_framework.routers import SimpleRouter

from compute.api.views import ComputeTargetViewSet, InstanceTypeViewSet

router = SimpleRouter()
router.register("instance-types", InstanceTypeViewSet, basename="instance-type")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/computes", ComputeTargetViewSet, basename="compute"
)
urlpatterns = router.urls
