"""What a deployment's pods ask of the studio when its model and code are more than
their ConfigMap carries: the code archive and the model's files. Authenticated by the
deployment's own token (`endpoints.tokens.deployment_token`: `Bearer kdt_...`), good
for that deployment's current generation only, never a user's."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.files.storage import storages
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import authentication, exceptions, permissions, views
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints import tokens
from endpoints.models import Deployment
from registry import services as registry
from studio.auth import key_from_header


class DeploymentTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Deployment] | None:
        key = key_from_header(authentication.get_authorization_header(request))
        if key is None:
            return None
        deployment = tokens.deployment_for(key)
        if deployment is None:
            raise exceptions.AuthenticationFailed(
                "Invalid deployment token, or its deployment has changed since."
            )
        return AnonymousUser(), deployment

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="deployment"'


class HasDeploymentToken(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Deployment)


class DeploymentIOView(views.APIView):
    authentication_classes = (DeploymentTokenAuthentication,)
    permission_classes = (HasDeploymentToken,)
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
