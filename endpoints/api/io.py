"""What a deployment's pods ask of the studio when its model and code are more than
their ConfigMap carries: the code archive and the model's files. Authenticated by the
deployment's own token (`endpoints.tokens.deployment_token`: `Bearer kdt_...`), good
for that deployment's current generation only, never a user's."""

from __future__ import annotations

from django.core.files.storage import storages
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, views
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import tokens
from endpoints.models import Deployment
from registry import services as registry
from studio.auth import HasWorkloadToken, WorkloadTokenAuthentication


class DeploymentTokenAuthentication(WorkloadTokenAuthentication):
    realm = "deployment"
    invalid = "Invalid deployment token, or its deployment has changed since."

    def find(self, key: str) -> Deployment | None:
        return tokens.deployment_for(key)


class DeploymentIOView(views.APIView):
    authentication_classes = (DeploymentTokenAuthentication,)
    permission_classes = (HasWorkloadToken,)
    throttle_classes = ()

    def deployment(self, request: Request) -> Deployment:
        assert isinstance(request.auth, Deployment)
        return request.auth


@extend_schema(exclude=True)  # for pods, not people
class CodeView(DeploymentIOView):
    def get(self, request: Request) -> FileResponse:
        deployment = self.deployment(request)
        if not deployment.code:
            raise exceptions.NotFound("The deployment has no code.")
        return FileResponse(storages["artifacts"].open(deployment.code, "rb"))


@extend_schema(exclude=True)
class ModelFilesView(DeploymentIOView):
    def get(self, request: Request) -> Response:
        """The model's files: {"path", "size"} each, relative to the model."""
        model = self.deployment(request).model
        if model is None:
            raise exceptions.NotFound("The deployment has no model.")
        return Response({"files": registry.files(model)})


@extend_schema(exclude=True)
class ModelFileView(DeploymentIOView):
    def get(self, request: Request, path: str) -> FileResponse:
        """One of the model's files, streamed; only those the listing names."""
        model = self.deployment(request).model
        if model is None or path not in {f["path"] for f in registry.files(model)}:
            raise exceptions.NotFound(f"The model has no file {path!r}.")
        return FileResponse(registry.open_file(model, path))
