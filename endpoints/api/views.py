"""Online endpoints and deployments: thin views over endpoints.services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import instances, services
from endpoints.api.serializers import (
    DeploymentSerializer,
    EndpointSerializer,
    render_deployment,
    render_endpoint,
)
from endpoints.models import Deployment, Endpoint, State
from studio.api import WorkspaceMixin, document_from_request
from studio.errors import Conflict, FieldErrors

MAX_LOG_LINES = 10_000


@dataclass
class Sent:
    """A deployment as a create or update request sends it: the YAML (`spec`), the code
    folder as a .tar.gz (`code`), an inline model's files (`model_file`, or `model_folder`
    as a .tar.gz)."""

    data: dict[str, Any]
    code: Any
    model: Any
    model_is_folder: bool


def deployment_sent(
    request: Request, endpoint: str, name: str | None, existing: QuerySet[Any]
) -> Sent:
    """The request's deployment, its names checked against the URL's; a create may not
    reuse a name (`existing`: the endpoint's deployments)."""
    data, _text = document_from_request(request, "deployment")
    data.setdefault("endpoint_name", endpoint)
    if data["endpoint_name"] != endpoint:
        raise FieldErrors([("endpoint_name", f"must be {endpoint!r}, the endpoint this URL names")])
    if name is not None:
        data.setdefault("name", name)
        if data["name"] != name:
            raise FieldErrors([("name", f"must be {name!r}, the deployment this URL names")])
    elif existing.filter(name=data.get("name")).exists():
        raise Conflict(f"Deployment {data.get('name')} exists; update it instead.")
    folder = request.FILES.get("model_folder")
    return Sent(data, request.FILES.get("code"), folder or request.FILES.get("model_file"),
                folder is not None)  # fmt: skip


class OnlineEndpointViewSet(WorkspaceMixin, viewsets.ViewSet):
    """A workspace's online endpoints: members read them; contributors create, update
    (traffic), delete them and read their keys."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    serializer_class = EndpointSerializer

    def _get(self, name: str) -> Endpoint:
        found = (
            Endpoint.objects.filter(workspace=self.get_workspace(), name=name)
            .exclude(state=State.DELETING)
            .select_related("compute__cluster")
            .first()
        )
        if found is None:
            raise Http404(f"No online endpoint named {name!r}.")
        return found

    @extend_schema(responses=EndpointSerializer(many=True))
    def list(self, request: Request, **kwargs: Any) -> Response:
        found = Endpoint.objects.filter(workspace=self.get_workspace()).exclude(
            state=State.DELETING
        )
        return Response(
            [
                render_endpoint(e, request.build_absolute_uri("/"))
                for e in found.select_related("compute__cluster")
            ]
        )

    @extend_schema(responses=EndpointSerializer)
    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        return Response(render_endpoint(self._get(name), request.build_absolute_uri("/")))

    @extend_schema(request=None, responses=EndpointSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        workspace = self.get_workspace()
        data, _text = document_from_request(request, "endpoint")
        if Endpoint.objects.filter(name=data.get("name")).exists():
            raise FieldErrors(
                [
                    (
                        "name",
                        f"an endpoint named {data['name']!r} already exists "
                        "(online-endpoint update changes it)",
                    )
                ]
            )
        endpoint = services.save_endpoint(workspace, request.user, data)
        return Response(render_endpoint(endpoint, request.build_absolute_uri("/")), status=201)

    @extend_schema(request=None, responses=EndpointSerializer)
    def update(self, request: Request, name: str, **kwargs: Any) -> Response:
        existing = self._get(name)
        data, _text = document_from_request(request, "endpoint")
        data.setdefault("name", name)
        if data["name"] != name:
            raise FieldErrors([("name", f"must be {name!r}, the endpoint this URL names")])
        endpoint = services.save_endpoint(existing.workspace, request.user, data)
        return Response(render_endpoint(endpoint, request.build_absolute_uri("/")))

    @extend_schema(request=None, responses=EndpointSerializer)
    def partial_update(self, request: Request, name: str, **kwargs: Any) -> Response:
        """Traffic only: {"traffic": {"blue": 90, "green": 10}, "mirror_traffic": {...}}."""
        endpoint = self._get(name)
        data: dict[str, Any] = request.data if isinstance(request.data, dict) else {}
        unknown = set(data) - {"traffic", "mirror_traffic"}
        if unknown:
            raise FieldErrors([(f, "only traffic and mirror_traffic change here") for f in unknown])
        traffic = data.get("traffic", endpoint.traffic)
        endpoint = services.set_traffic(endpoint, traffic, data.get("mirror_traffic"))
        return Response(render_endpoint(endpoint, request.build_absolute_uri("/")))

    def destroy(self, request: Request, name: str, **kwargs: Any) -> Response:
        services.delete_endpoint(self._get(name))
        return Response(status=204)

    @extend_schema(request=None, responses={200: dict})
    @action(detail=True, methods=["post"], url_path="get-credentials")
    def credentials(self, request: Request, name: str, **kwargs: Any) -> Response:
        """The keys (key mode: primaryKey, secondaryKey) or a short-lived token (aml_token)."""
        endpoint = self._get(name)
        if endpoint.auth_mode == "aml_token":
            return Response(services.issue_token(endpoint))
        keys = services.keys_of(endpoint)
        return Response({"primaryKey": keys["primary"], "secondaryKey": keys["secondary"]})

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["post"], url_path="regenerate-keys")
    def regenerate(self, request: Request, name: str, **kwargs: Any) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        key_type = str(data.get("key_type", "primary"))
        services.regenerate_key(self._get(name), key_type)
        return Response(status=204)


class OnlineDeploymentViewSet(WorkspaceMixin, viewsets.ViewSet):
    """An endpoint's deployments. Create and update take the YAML (`spec`), the code
    folder as a .tar.gz (`code`) and an inline model's files (`model_file`, or
    `model_folder` as a .tar.gz); `?all_traffic=true` sends every request to it."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    serializer_class = DeploymentSerializer

    def _endpoint(self) -> Endpoint:
        name = self.kwargs["endpoint"]
        found = (
            Endpoint.objects.filter(workspace=self.get_workspace(), name=name)
            .exclude(state=State.DELETING)
            .first()
        )
        if found is None:
            raise Http404(f"No online endpoint named {name!r}.")
        return found

    def _get(self, name: str) -> Deployment:
        found = (
            self._endpoint()
            .deployments.exclude(state=State.DELETING)
            .select_related("endpoint", "model")
            .filter(name=name)
            .first()
        )
        if found is None:
            raise Http404(f"No deployment named {name!r}.")
        return found

    @extend_schema(responses=DeploymentSerializer(many=True))
    def list(self, request: Request, **kwargs: Any) -> Response:
        found = self._endpoint().deployments.exclude(state=State.DELETING)
        return Response([render_deployment(d) for d in found.select_related("endpoint", "model")])

    @extend_schema(responses=DeploymentSerializer)
    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        return Response(render_deployment(self._get(name)))

    def _save(self, request: Request, name: str | None) -> Deployment:
        endpoint = self._endpoint()
        sent = deployment_sent(request, endpoint.name, name, endpoint.deployments.all())
        return services.save_deployment(
            endpoint.workspace,
            request.user,
            sent.data,
            code=sent.code,
            model_upload=sent.model,
            model_is_folder=sent.model_is_folder,
            all_traffic=str(request.query_params.get("all_traffic")).lower() == "true",
        )

    @extend_schema(request=None, responses=DeploymentSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        return Response(render_deployment(self._save(request, None)), status=201)

    @extend_schema(request=None, responses=DeploymentSerializer)
    def update(self, request: Request, name: str, **kwargs: Any) -> Response:
        self._get(name)
        return Response(render_deployment(self._save(request, name)))

    def destroy(self, request: Request, name: str, **kwargs: Any) -> Response:
        services.delete_deployment(self._get(name))
        return Response(status=204)

    @extend_schema(responses={(200, "text/plain"): str})
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, name: str, **kwargs: Any) -> HttpResponse:
        """The last `?lines=N` of a log: `?container=inference-server` (the model server,
        `?instance=I`) or `storage-initializer` (its preparation: the environment build)."""
        deployment = self._get(name)
        try:
            lines = min(MAX_LOG_LINES, max(1, int(request.query_params.get("lines", 100))))
            index = int(request.query_params.get("instance", 0))
        except ValueError as exc:
            raise FieldErrors([("lines", "must be a number")]) from exc
        container = request.query_params.get("container", "inference-server")
        text = instances.log_text(deployment, container, lines, index)
        return HttpResponse(text, content_type="text/plain; charset=utf-8")
