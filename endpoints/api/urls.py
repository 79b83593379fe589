from rest_framework.routers import SimpleRouter

from endpoints.api.views import OnlineDeploymentViewSet, OnlineEndpointViewSet

router = SimpleRouter()
router.register(
    r"workspaces/(?P<workspace>[^/]+)/online-endpoints",
    OnlineEndpointViewSet,
    basename="online-endpoint",
)
router.register(
    r"workspaces/(?P<workspace>[^/]+)/online-endpoints/(?P<endpoint>[^/]+)/deployments",
    OnlineDeploymentViewSet,
    basename="online-deployment",
)
urlpatterns = router.urls
