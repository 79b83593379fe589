"""Batch endpoints and deployments: thin views over endpoints.batch."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import batch
from endpoints.api.views import deployment_sent
from endpoints.models import BatchDeployment, BatchEndpoint
from jobs.api.serializers import JobSerializer, job_detail, job_summary
from jobs.models import Job
from jobs.services import Upload
from studio.api import WorkspaceMixin, document_from_request
from studio.errors import FieldErrors


class BatchEndpointSerializer(serializers.Serializer[BatchEndpoint]):
    name = serializers.CharField()
    description = serializers.CharField()
    auth_mode = serializers.CharField()
    defaults = serializers.DictField(child=serializers.CharField(allow_null=True))
    deployments = serializers.ListField(child=serializers.CharField())
    scoring_uri = serializers.CharField(help_text="POST here to invoke (with your studio token).")
    tags = serializers.DictField(child=serializers.CharField())
    properties = serializers.DictField(child=serializers.CharField())
    created_at = serializers.DateTimeField()


class BatchDeploymentSerializer(serializers.Serializer[BatchDeployment]):
    name = serializers.CharField()
    endpoint_name = serializers.CharField()
    type = serializers.CharField()
    model = serializers.CharField(help_text="NAME:VERSION in the registry")
    compute = serializers.CharField()
    environment = serializers.JSONField(allow_null=True)
    code_configuration = serializers.DictField(allow_null=True)
    resources = serializers.DictField()
    settings = serializers.DictField()
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def render_endpoint(endpoint: BatchEndpoint, request: Request) -> dict[str, Any]:
    path = f"/workspaces/{endpoint.workspace.name}/batch-endpoints/{endpoint.name}/invoke/"
    return {
        "name": endpoint.name,
        "description": endpoint.description,
        "auth_mode": "aad_token",
        "defaults": {"deployment_name": endpoint.default_deployment or None},
        "deployments": [d.name for d in endpoint.deployments.all()],
        "scoring_uri": request.build_absolute_uri("/api/v1" + path),
        "tags": endpoint.tags,
        "properties": endpoint.properties,
        "created_at": endpoint.created_at,
    }


def render_deployment(deployment: BatchDeployment) -> dict[str, Any]:
    document = deployment.document
    return {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint.name,
        "type": "model",
        "model": f"{deployment.model.name}:{deployment.model.version}",
        "compute": deployment.compute.name,
        "environment": document.get("environment"),
        "code_configuration": document.get("code_configuration"),
        "resources": document.get("resources") or {},
        "settings": document.get("settings") or {},
        "is_default": deployment.endpoint.default_deployment == deployment.name,
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
    }


def render_job(job: Job, request: Request, detail: bool = False) -> dict[str, Any]:
    data = job_detail(job, request) if detail else job_summary(job)
    return {**data, "progress": batch.progress(job)}


class BatchEndpointViewSet(WorkspaceMixin, viewsets.ViewSet):
    """A workspace's batch endpoints. Members read them; contributors create, update,
    delete and invoke them. `invoke` starts a job: JSON {"input": "azureml:...",
    "input_type", "deployment_name", "output_path", "mini_batch_size", "instance_count",
    "set": {"output_file_name": ...}}, or multipart with the input's files as `input` (a
    file, or a folder as .tar.gz) and the same fields."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    serializer_class = BatchEndpointSerializer

    def _get(self, name: str) -> BatchEndpoint:
        found = BatchEndpoint.objects.filter(workspace=self.get_workspace(), name=name).first()
        if found is None:
            raise Http404(f"No batch endpoint named {name!r}.")
        return found

    @extend_schema(responses=BatchEndpointSerializer(many=True))
    def list(self, request: Request, **kwargs: Any) -> Response:
        found = BatchEndpoint.objects.filter(workspace=self.get_workspace())
        found = found.prefetch_related("deployments").select_related("workspace")
        return Response([render_endpoint(e, request) for e in found])

    @extend_schema(responses=BatchEndpointSerializer)
    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        return Response(render_endpoint(self._get(name), request))

    @extend_schema(request=None, responses=BatchEndpointSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        data, _text = document_from_request(request, "batch endpoint")
        made = batch.save_endpoint(self.get_workspace(), request.user, data, create=True)
        return Response(render_endpoint(made, request), status=201)

    @extend_schema(request=None, responses=BatchEndpointSerializer)
    def update(self, request: Request, name: str, **kwargs: Any) -> Response:
        existing = self._get(name)
        data, _text = document_from_request(request, "batch endpoint")
        data.setdefault("name", name)
        if data["name"] != name:
            raise FieldErrors([("name", f"must be {name!r}, the endpoint this URL names")])
        saved = batch.save_endpoint(existing.workspace, request.user, data, create=False)
        return Response(render_endpoint(saved, request))

    def destroy(self, request: Request, name: str, **kwargs: Any) -> Response:
        batch.delete_endpoint(self._get(name))
        return Response(status=204)

    @extend_schema(request=None, responses={201: JobSerializer})
    @action(detail=True, methods=["post"])
    def invoke(self, request: Request, name: str, **kwargs: Any) -> Response:
        endpoint = self._get(name)
        data: Any = request.data if isinstance(request.data, dict) else {}
        upload = request.FILES.get("input")
        sets = data.get("set") or {}
        if hasattr(data, "getlist") and not isinstance(sets, dict):  # multipart: set=K=V
            sets = dict(s.partition("=")[::2] for s in data.getlist("set"))
        if not isinstance(sets, dict):
            raise FieldErrors([("set", "must map field names to values")])
        job = batch.invoke(
            endpoint,
            request.user,
            input=None if upload else data.get("input"),
            input_upload=Upload(upload, upload.name or "input") if upload else None,
            input_type=str(data.get("input_type") or "uri_folder"),
            deployment_name=data.get("deployment_name") or None,
            output_path=data.get("output_path") or None,
            mini_batch_size=_number(data, "mini_batch_size"),
            instance_count=_number(data, "instance_count"),
            sets=sets,
        )
        return Response(render_job(job, request, detail=True), status=201)

    @extend_schema(responses=JobSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="jobs")
    def jobs(self, request: Request, name: str, **kwargs: Any) -> Response:
        """list-jobs: the jobs the endpoint started, newest first, with their progress."""
        found = batch.jobs_of(self._get(name))
        return Response([render_job(job, request) for job in found])


def _number(data: Any, name: str) -> int | None:
    value = data.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise FieldErrors([(name, "must be a whole number")]) from exc


class BatchDeploymentViewSet(WorkspaceMixin, viewsets.ViewSet):
    """A batch endpoint's deployments. Create and update take the YAML (`spec`), the code
    folder as a .tar.gz (`code`) and an inline model's files (`model_file`, or
    `model_folder` as a .tar.gz); `?set_default=true` makes it the endpoint's default."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    serializer_class = BatchDeploymentSerializer

    def _endpoint(self) -> BatchEndpoint:
        name = self.kwargs["endpoint"]
        found = BatchEndpoint.objects.filter(workspace=self.get_workspace(), name=name).first()
        if found is None:
            raise Http404(f"No batch endpoint named {name!r}.")
        return found

    def _deployments(self) -> QuerySet[BatchDeployment]:
        return self._endpoint().deployments.select_related("endpoint", "model", "compute")

    def _get(self, name: str) -> BatchDeployment:
        found = self._deployments().filter(name=name).first()
        if found is None:
            raise Http404(f"No deployment named {name!r}.")
        return found

    @extend_schema(responses=BatchDeploymentSerializer(many=True))
    def list(self, request: Request, **kwargs: Any) -> Response:
        return Response([render_deployment(d) for d in self._deployments()])

    @extend_schema(responses=BatchDeploymentSerializer)
    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        return Response(render_deployment(self._get(name)))

    def _save(self, request: Request, name: str | None) -> BatchDeployment:
        endpoint = self._endpoint()
        sent = deployment_sent(request, endpoint.name, name, endpoint.deployments.all())
        return batch.save_deployment(
            endpoint.workspace,
            request.user,
            sent.data,
            code=sent.code,
            model_upload=sent.model,
            model_is_folder=sent.model_is_folder,
            set_default=str(request.query_params.get("set_default")).lower() == "true",
        )

    @extend_schema(request=None, responses=BatchDeploymentSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        return Response(render_deployment(self._save(request, None)), status=201)

    @extend_schema(request=None, responses=BatchDeploymentSerializer)
    def update(self, request: Request, name: str, **kwargs: Any) -> Response:
        self._get(name)
        return Response(render_deployment(self._save(request, name)))

    def destroy(self, request: Request, name: str, **kwargs: Any) -> Response:
        batch.delete_deployment(self._get(name))
        return Response(status=204)

    @extend_schema(responses=JobSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="jobs")
    def jobs(self, request: Request, name: str, **kwargs: Any) -> Response:
        """list-jobs: the jobs this deployment ran."""
        deployment = self._get(name)
        found = batch.jobs_of(deployment.endpoint, deployment.name)
        return Response([render_job(job, request) for job in found])
