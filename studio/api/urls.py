from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from compute.api.views import ComputeTargetViewSet, InstanceTypeViewSet
from jobs.api.views import JobViewSet
from studio.api.views import MemberViewSet, TokenViewSet, WorkspaceViewSet

router = DefaultRouter()
router.register("workspaces", WorkspaceViewSet, basename="workspace")
router.register("instance-types", InstanceTypeViewSet, basename="instance-type")
router.register("tokens", TokenViewSet, basename="token")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/computes", ComputeTargetViewSet, basename="compute"
)
router.register(r"workspaces/(?P<workspace>[^/]+)/jobs", JobViewSet, basename="job")
router.register(r"workspaces/(?P<workspace>[^/]+)/members", MemberViewSet, basename="member")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # A readable reference, its scripts served from the sidecar package (no CDN).
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    # A file path ends the URL: no trailing slash, so it is not under the router.
    path(
        "workspaces/<str:workspace>/jobs/<str:name>/outputs/<str:output>/<path:path>",
        JobViewSet.as_view({"get": "download_file"}),
        name="job-output-file",
    ),
    path("", include(router.urls)),
]
