"""Datastores and data assets: thin views over data.services."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from data import services
from data.api.serializers import (
    DataAssetSerializer,
    DatastoreSerializer,
    render_asset,
    render_datastore,
)
from data.models import DataAsset, Datastore
from studio.api import (
    AssetKind,
    AssetVersionViewSet,
    AssetViewSet,
    WorkspaceMixin,
    document_from_request,
)
from studio.errors import FieldErrors
from studio.models import Role


class DatastoreViewSet(WorkspaceMixin, viewsets.ViewSet):
    """A workspace's datastores: members read them; owners and IT-ops manage them.
    PUT creates or replaces (Azure's `datastore create`); credentials are never shown."""

    write_role = Role.OWNER
    it_ops_manage = True
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    serializer_class = DatastoreSerializer

    def _get(self, name: str) -> Datastore:
        datastore = Datastore.objects.filter(workspace=self.get_workspace(), name=name).first()
        if datastore is None:
            raise Http404(f"No datastore named {name!r}.")
        return datastore

    @extend_schema(responses=DatastoreSerializer(many=True))
    def list(self, request: Request, **kwargs: Any) -> Response:
        found = Datastore.objects.filter(workspace=self.get_workspace())
        return Response([render_datastore(d) for d in found])

    @extend_schema(responses=DatastoreSerializer)
    def retrieve(self, request: Request, name: str, **kwargs: Any) -> Response:
        return Response(render_datastore(self._get(name)))

    @extend_schema(request=None, responses=DatastoreSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        workspace = self.get_workspace()
        data, _text = document_from_request(request, "datastore")
        if Datastore.objects.filter(workspace=workspace, name=data.get("name")).exists():
            raise FieldErrors([("name", f"a datastore named {data['name']!r} already exists")])
        datastore = services.save_datastore(workspace, request.user, data)
        return Response(render_datastore(datastore), status=201)

    @extend_schema(request=None, responses=DatastoreSerializer)
    def update(self, request: Request, name: str, **kwargs: Any) -> Response:
        workspace = self.get_workspace()
        data, _text = document_from_request(request, "datastore")
        data.setdefault("name", name)
        if data["name"] != name:
            raise FieldErrors([("name", f"must be {name!r}, the datastore this URL names")])
        created = not Datastore.objects.filter(workspace=workspace, name=name).exists()
        datastore = services.save_datastore(workspace, request.user, data)
        return Response(render_datastore(datastore), status=201 if created else 200)

    def destroy(self, request: Request, name: str, **kwargs: Any) -> Response:
        services.delete_datastore(self._get(name))
        return Response(status=204)


DATA_ASSETS = AssetKind(DataAsset, render_asset)


@extend_schema_view(
    list=extend_schema(responses=DataAssetSerializer(many=True)),
    retrieve=extend_schema(
        operation_id="workspaces_data_versions", responses=DataAssetSerializer(many=True)
    ),
)
class DataAssetViewSet(AssetViewSet):
    """A workspace's data assets: members read them, contributors register versions."""

    kind = DATA_ASSETS

    serializer_class = DataAssetSerializer

    @extend_schema(request=None, responses=DataAssetSerializer)
    def create(self, request: Request, **kwargs: Any) -> Response:
        """JSON or YAML (`yaml`, or multipart `spec`); a local path's content comes as the
        multipart part `file` (a file, or a folder as a .tar.gz)."""
        workspace = self.get_workspace()  # a stranger's body is never parsed
        data, _text = document_from_request(request, "data asset")
        upload = request.FILES.get("file")
        asset = services.create_asset(
            workspace, request.user, data, upload, (upload.name or "") if upload else ""
        )
        return Response(render_asset(asset), status=201)


@extend_schema_view(retrieve=extend_schema(responses=DataAssetSerializer))
class DataVersionViewSet(AssetVersionViewSet):
    """One version of a data asset; `latest` names the newest."""

    kind = DATA_ASSETS

    serializer_class = DataAssetSerializer
