from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from compute.api.views import ComputeTargetViewSet, InstanceTypeViewSet
from jobs.api.views import JobViewSet
from studio.api.views import MemberViewSet, WorkspaceViewSet

router = DefaultRouter()
router.register("workspaces", WorkspaceViewSet, basename="workspace")
router.register("instance-types", InstanceTypeViewSet, basename="instance-type")
router.register(
    r"workspaces/(?P<workspace>[^/]+)/computes", ComputeTargetViewSet, basename="compute"
)
router.register(r"workspaces/(?P<workspace>[^/]+)/jobs", JobViewSet, basename="job")
router.register(r"workspaces/(?P<workspace>[^/]+)/members", MemberViewSet, basename="member")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # A file path ends the URL: no trailing slash, so it is not under the router.
    path(
        "workspaces/<str:workspace>/jobs/<str:name>/outputs/<str:output>/<path:path>",
        JobViewSet.as_view({"get": "download_file"}),
        name="job-output-file",
    ),
    path("", include(router.urls)),
]
