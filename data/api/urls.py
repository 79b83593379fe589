from rest_framework.routers import SimpleRouter

from data.api.views import DataAssetViewSet, DatastoreViewSet, DataVersionViewSet

router = SimpleRouter()
router.register(
    r"workspaces/(?P<workspace>[^/]+)/datastores", DatastoreViewSet, basename="datastore"
)
router.register(r"workspaces/(?P<workspace>[^/]+)/data", DataAssetViewSet, basename="data")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/data/(?P<name>[^/]+)/versions",
    DataVersionViewSet,
    basename="data-version",
)
urlpatterns = router.urls
