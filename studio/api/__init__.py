"""API plumbing shared by every app: errors in one shape, workspace lookups, roles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.uploadedfile import UploadedFile
from django.http import Http404
from rest_framework import exceptions, status, viewsets
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from studio import access, assets
from studio.documents import DocumentError, load_yaml
from studio.errors import Conflict, FieldErrors
from studio.models import Role, VersionedAsset, Workspace


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """DRF's nested error detail -> [{"field": "a.b", "message": "..."}]."""
    if isinstance(detail, dict):
        errors = []
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            errors.extend(
                _flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name)
            )
        return errors
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [{"field": prefix or "(document)", "message": str(item)} for item in detail]
        errors = []
        for index, item in enumerate(detail):
            errors.extend(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return errors
    return [{"field": prefix or "(document)", "message": str(detail)}]


def document_from_request(request: Request, what: str) -> tuple[dict[str, Any], str]:
    """A document (a job, a data asset...) and its YAML text, from JSON or multipart.

    JSON: {"yaml": "<text>"} or the document itself. Multipart: a `spec` part (YAML text
    or file) beside whatever files come with it.
    """
    spec_file = request.FILES.get("spec")
    if isinstance(spec_file, UploadedFile):
        if (spec_file.size or 0) > settings.STUDIO_MAX_REQUEST_BYTES:
            raise DocumentError([("spec", f"the {what} file is larger than the studio accepts")])
        text = spec_file.read().decode("utf-8", errors="replace")
    elif not isinstance(request.data, Mapping):
        raise DocumentError([("(document)", f"must be a mapping of {what} fields")])
    elif isinstance(request.data.get("yaml"), str):
        text = request.data["yaml"]
    elif "spec" in request.data:
        text = str(request.data["spec"])
    elif request.content_type.startswith("application/json"):
        return dict(request.data), ""  # bounded by the JSON parser already
    else:
        raise DocumentError(
            [("(document)", f"send the {what} as YAML in 'yaml' or 'spec', or as JSON")]
        )
    return load_yaml(text, what), text


def field_errors(error: FieldErrors) -> list[dict[str, str]]:
    return [{"field": field, "message": message} for field, message in error.errors]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, FieldErrors):
        return Response({"errors": field_errors(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Conflict):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, exceptions.ValidationError):
        return Response({"errors": _flatten(exc.detail)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):  # from the domain services
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return Response({"errors": _flatten(detail)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    return drf_exception_handler(exc, context)


class IsItOpsOrReadOnly(BasePermission):
    message = "Only IT-ops may change compute targets and instance types."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return access.is_it_ops(request.user)


class WorkspaceMixin:
    """For views under /workspaces/<workspace>/: the workspace, if the user may see it.

    Reads need membership; writes need `write_role` (IT-ops may manage compute in any
    workspace through views that allow it).
    """

    kwargs: dict[str, Any]
    write_role: str = Role.CONTRIBUTOR
    it_ops_manage: bool = False

    def get_workspace(self) -> Workspace:
        if not hasattr(self, "_workspace"):
            request: Request = self.request  # type: ignore[attr-defined]
            name = self.kwargs["workspace"]
            user = request.user
            if self.it_ops_manage and access.is_it_ops(user):
                workspace = Workspace.objects.filter(name=name).first()
                if workspace is None:
                    raise Http404("No such workspace.")
                self._workspace = workspace
            else:
                needed: str = Role.READER
                if request.method not in ("GET", "HEAD", "OPTIONS"):
                    needed = self.write_role
                self._workspace, _role = access.workspace_for(user, name, needed)
        return self._workspace


class IsItOps(BasePermission):
    message = "Only IT-ops may see and manage clusters."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return access.is_it_ops(request.user)


@dataclass(frozen=True)
class AssetKind:
    """A kind of versioned asset as the API serves it: its model, and how one version
    is rendered (a plain function, so no field reaches a response unasked)."""

    model: type[VersionedAsset]
    render: Callable[[Any], dict[str, Any]]


class AssetViewSet(WorkspaceMixin, viewsets.ViewSet):
    """A workspace's versioned assets of one `kind`: members read them, contributors
    register versions (the subclass's `create`). `/<kind>/` lists each one's latest
    version with its count; `/<kind>/<name>/` its versions, newest first."""

    kind: ClassVar[AssetKind]
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def list(self, request: Request, **kwargs: Any) -> Response:
        latest = assets.latest(self.kind.model, self.get_workspace()).select_related("created_by")
        return Response([{**self.kind.render(a), "versions": a.versions} for a in latest])

    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        model = self.kind.model
        found = model._default_manager.filter(workspace=self.get_workspace(), name=name)
        versions = [self.kind.render(a) for a in found.select_related("created_by")]
        if not versions:
            raise Http404(f"No {model._meta.verbose_name} named {name!r}.")
        return Response(versions)


class AssetVersionViewSet(WorkspaceMixin, viewsets.ViewSet):
    """One version of an asset of one `kind`; `latest` names the newest."""

    kind: ClassVar[AssetKind]
    lookup_field = "version"
    lookup_value_regex = "[^/]+"

    def retrieve(self, request: Request, name: str, version: str, **kwargs: Any) -> Response:
        wanted = None if version == "latest" else version
        try:
            asset = assets.find(self.kind.model, self.get_workspace(), name, wanted)
        except ValueError as exc:
            raise Http404(str(exc)) from exc
        return Response(self.kind.render(asset))
