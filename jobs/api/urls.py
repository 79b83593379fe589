from django.urls import path
from rest_framework.routers import SimpleRouter

from jobs.api.io import (
    BuildContextView,
    InputFileView,
    InputListingView,
    OutputView,
    UploadView,
)
from jobs.api.views import JobViewSet

router = SimpleRouter()
router.register(r"workspaces/(?P<workspace>[^/]+)/jobs", JobViewSet, basename="job")
urlpatterns = [
    # A file path ends the URL: no trailing slash, so it is not under the router.
    path(
        "workspaces/<str:workspace>/jobs/<str:name>/outputs/<str:output>/<path:path>",
        JobViewSet.as_view({"get": "download_file"}),
        name="job-output-file",
    ),
    # A job's own launcher, with its job token (jobs/api/io.py).
    path("job-io/uploads/<str:key>", UploadView.as_view(), name="job-io-upload"),
    path("job-io/outputs/<str:output>/<path:path>", OutputView.as_view(), name="job-io-output"),
    path("job-io/inputs/<str:name>/files/", InputListingView.as_view(), name="job-io-listing"),
    path("job-io/build-context", BuildContextView.as_view(), name="job-io-build-context"),
    path(
        "job-io/inputs/<str:name>/files/<path:path>",
        InputFileView.as_view(),
        name="job-io-input-file",
    ),
    *router.urls,
]
