"""Environments API: thin views over environments.services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from environments import services
from environments.models import Environment
from studio.api import AssetKind, AssetVersionViewSet, AssetViewSet, document_from_request


class EnvironmentSerializer(serializers.ModelSerializer[Environment]):
    """The schema of the answers (rendered by `render`)."""

    class Meta:
        model = Environment
        fields = ("name", "version", "image", "conda_file", "build", "description", "tags",
                  "os_type", "inference_config", "created_at")  # fmt: skip


def render(environment: Environment) -> dict[str, Any]:
    return {
        "name": environment.name,
        "version": environment.version,
        "image": environment.image,
        "conda_file": environment.conda_file,
        "build": {"dockerfile_path": environment.build["dockerfile_path"]}
        if environment.build
        else None,
        "description": environment.description,
        "tags": environment.tags,
        "os_type": environment.os_type,
        "inference_config": environment.inference_config,
        "created_by": environment.created_by.get_username() if environment.created_by else None,
        "created_at": environment.created_at,
    }


ENVIRONMENTS = AssetKind(Environment, render)


@extend_schema_view(
    list=extend_schema(responses=EnvironmentSerializer(many=True)),
    retrieve=extend_schema(
        operation_id="workspaces_environments_versions",
        responses=EnvironmentSerializer(many=True),
    ),
)
class EnvironmentViewSet(AssetViewSet):
    """A workspace's environments: members read them, contributors register versions."""

    kind = ENVIRONMENTS

    serializer_class = EnvironmentSerializer

    @extend_schema(request=None, responses=EnvironmentSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        """JSON or YAML (`yaml`, or multipart `spec`; `conda_file` as its content); a build
        context comes as the multipart part `context` (the folder as a .tar.gz)."""
        workspace = self.get_workspace()  # a stranger's body is never parsed
        data, _text = document_from_request(request, "environment")
        made = services.create_environment(
            workspace, request.user, data, request.FILES.get("context")
        )
        return Response(render(made), status=201)


@extend_schema_view(retrieve=extend_schema(responses=EnvironmentSerializer))
class EnvironmentVersionViewSet(AssetVersionViewSet):
    """One version of an environment; `latest` names the newest."""

    kind = ENVIRONMENTS

    serializer_class = EnvironmentSerializer
