"""Models: thin views over registry.services."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from registry import services
from registry.api.serializers import ModelFileSerializer, ModelSerializer, render_model
from registry.models import Model
from registry.views import download
from studio import assets
from studio.api import AssetKind, AssetVersionViewSet, AssetViewSet, document_from_request

MODELS = AssetKind(Model, render_model)


@extend_schema_view(
    list=extend_schema(responses=ModelSerializer(many=True)),
    retrieve=extend_schema(
        operation_id="workspaces_models_versions", responses=ModelSerializer(many=True)
    ),
)
class ModelViewSet(AssetViewSet):
    """A workspace's models: members read them, contributors register versions."""

    kind = MODELS
    serializer_class = ModelSerializer

    @extend_schema(request=None, responses=ModelSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        """JSON or YAML (`yaml`, or multipart `spec`). A local path's content comes as the
        multipart part `file` (one file) or `folder` (a folder, as a .tar.gz)."""
        workspace = self.get_workspace()  # a stranger's body is never parsed
        data, _text = document_from_request(request, "model")
        folder = request.FILES.get("folder")
        upload = folder or request.FILES.get("file")
        model = services.create_model(
            workspace, request.user, data, upload, upload_is_folder=folder is not None
        )
        return Response(render_model(model), status=201)


@extend_schema_view(retrieve=extend_schema(responses=ModelSerializer))
class ModelVersionViewSet(AssetVersionViewSet):
    """One version of a model (`latest`: the newest), its files and their download."""

    kind = MODELS
    serializer_class = ModelSerializer

    def _model(self, name: str, version: str) -> Model:
        try:
            found = assets.find(
                Model, self.get_workspace(), name, None if version == "latest" else version
            )
        except ValueError as exc:
            raise Http404(str(exc)) from exc
        assert isinstance(found, Model)
        return found

    @extend_schema(responses=ModelFileSerializer(many=True))
    @action(detail=True, methods=["get"])
    def files(self, request: Request, name: str, version: str, **kwargs: Any) -> Response:
        return Response(services.files(self._model(name, version)))

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def download(
        self, request: Request, name: str, version: str, **kwargs: Any
    ) -> HttpResponseBase:
        """The version's files as a zip, or one file with `?path=`."""
        return download(self._model(name, version), request.query_params.get("path"))
