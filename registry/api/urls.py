from rest_framework.routers import SimpleRouter

from registry.api.views import ModelVersionViewSet, ModelViewSet

router = SimpleRouter()
router.register(r"workspaces/(?P<workspace>[^/]+)/models", ModelViewSet, basename="model")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/models/(?P<name>[^/]+)/versions",
    ModelVersionViewSet,
    basename="model-version",
)
urlpatterns = router.urls
