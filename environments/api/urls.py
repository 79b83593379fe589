from rest_framework.routers import SimpleRouter

from environments.api.views import EnvironmentVersionViewSet, EnvironmentViewSet

router = SimpleRouter()
router.register(
    r"workspaces/(?P<workspace>[^/]+)/environments", EnvironmentViewSet, basename="environment"
)
router.register(
    r"workspaces/(?P<workspace>[^/]+)/environments/(?P<name>[^/]+)/versions",
    EnvironmentVersionViewSet,
    basename="environment-version",
)
urlpatterns = router.urls
