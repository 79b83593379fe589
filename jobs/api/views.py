"""Jobs API: thin views over jobs.services."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from jobs import services
from jobs.api.serializers import JobListSerializer, JobSerializer
from jobs.filters import JobFilter
from jobs.models import Job
from jobs.views import output_download, output_file
from studio.api import WorkspaceMixin, document_from_request


def spec_from_request(request: Request) -> tuple[dict[str, Any], str, dict[str, services.Upload]]:
    """The job document, its YAML text, and uploads, from JSON or multipart.

    JSON: {"yaml": "<text>"} or the job document itself.
    Multipart: a `spec` part (YAML text or file), a `code` archive, `inputs.<name>` files.
    """
    uploads = {
        key: services.Upload(file=f, filename=f.name or key)
        for key, f in request.FILES.items()
        if isinstance(f, UploadedFile)
    }
    uploads.pop("spec", None)
    data, text = document_from_request(request, "job")
    return data, text, uploads


LOG_PAGE = 10_000


def _whole_number(request: Request, name: str, default: int) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError as exc:
        raise ValidationError({name: ["must be a whole number"]}) from exc
    if value < 0:
        raise ValidationError({name: ["must not be negative"]})
    return value


class JobViewSet(
    WorkspaceMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet[Job],
):
    """The workspace's jobs: members read them, contributors submit and cancel."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    filter_backends = (DjangoFilterBackend,)
    filterset_class = JobFilter
    queryset = Job.objects.none()  # for the schema; get_queryset is the workspace's

    def get_queryset(self) -> QuerySet[Job]:
        jobs = Job.objects.filter(workspace=self.get_workspace()).select_related(
            "workspace", "created_by"
        )
        if self.action == "retrieve":
            jobs = jobs.prefetch_related("status_changes")
        return jobs

    def get_serializer_class(self) -> type[JobListSerializer]:
        return JobListSerializer if self.action == "list" else JobSerializer

    @extend_schema(request=None, responses=JobSerializer)
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        workspace = self.get_workspace()  # a stranger's body is never parsed
        data, text, uploads = spec_from_request(request)
        job = services.submit(workspace, request.user, data, uploads, source_yaml=text)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data, status=201)

    @extend_schema(request=None, responses={200: None})
    @action(detail=False, methods=["post"])
    def validate(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Check a job without submitting it."""
        workspace = self.get_workspace()
        data, _text, uploads = spec_from_request(request)
        spec, compute, instance_type, objects = services.would_create(workspace, data, uploads)
        return Response(
            {
                "valid": True,
                "compute": compute.name,
                "instance_type": instance_type.name,
                "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                # What the compute would create (a cluster's Job and ConfigMap), exactly.
                "objects": objects,
            }
        )

    @extend_schema(request=None, responses=JobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        job = services.cancel(self.get_object())
        job = self.get_queryset().get(pk=job.pk)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Only lines after this seq."),
            OpenApiParameter(
                "limit", int, description=f"At most this many lines (default and most: {LOG_PAGE})."
            ),
        ],
        responses={(200, "text/plain"): str},
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        """The job's output as text, a page at a time: `X-Last-Seq` tells where to resume
        with ?after=, and `X-More: true` that there are lines after this page."""
        job = self.get_object()
        after = _whole_number(request, "after", 0)
        limit = min(_whole_number(request, "limit", LOG_PAGE) or LOG_PAGE, LOG_PAGE)
        lines = list(services.log_lines(job, after, limit + 1).values_list("seq", "line"))
        more = len(lines) > limit
        lines = lines[:limit]
        text = "".join(line + "\n" for _seq, line in lines)
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["X-Last-Seq"] = str(lines[-1][0] if lines else after)
        response["X-More"] = "true" if more else "false"
        response["X-Job-Status"] = job.status
        return response

    @extend_schema(responses={200: None})
    @action(detail=True, methods=["get"], url_path=r"outputs/(?P<output>[A-Za-z_]\w*)")
    def download(
        self, request: Request, output: str, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        """One output of the job as a zip archive (`default` is ./outputs)."""
        return output_download(self.get_object(), output)

    @extend_schema(
        operation_id="workspaces_jobs_outputs_file",
        responses={(200, "application/octet-stream"): bytes},
    )
    def download_file(
        self, request: Request, output: str, path: str, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        """One file of one output of the job."""
        return output_file(self.get_object(), output, path)
