"""A cluster's instance types (IT-ops change them, everyone reads them): the InstanceType
objects of that cluster, created from the studio or from the files Azure users have."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from compute import instance_types
from compute.api.serializers import InstanceTypeSerializer
from compute.models import Cluster, InstanceType
from studio.api import IsItOpsOrReadOnly


class ClusterInstanceTypeSerializer(InstanceTypeSerializer):
    class Meta(InstanceTypeSerializer.Meta):
        fields = (*InstanceTypeSerializer.Meta.fields, "origin")  # type: ignore[assignment]
        read_only_fields = ("created_at", "origin")  # type: ignore[assignment]


class ClusterInstanceTypeViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[InstanceType],
):
    serializer_class = ClusterInstanceTypeSerializer
    permission_classes = (IsAuthenticated, IsItOpsOrReadOnly)
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def cluster(self) -> Cluster:
        return get_object_or_404(Cluster, name=self.kwargs["cluster"])

    def get_queryset(self) -> QuerySet[InstanceType]:
        return InstanceType.objects.filter(cluster=self.cluster())

    @extend_schema(
        request=ClusterInstanceTypeSerializer,
        responses={201: ClusterInstanceTypeSerializer(many=True)},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create or replace instance types: {name, nodeSelector, resources}, or a
        Kubernetes InstanceType / InstanceTypeList (this studio's group or Azure's)."""
        cluster = self.cluster()
        body = request.data if isinstance(request.data, dict) else {}
        if "apiVersion" in body:
            wanted = instance_types.from_document(body)
        else:
            wanted = [(body.get("name", ""), body.get("nodeSelector") or {},
                       body.get("resources"), body.get("description", ""))]  # fmt: skip
        saved = instance_types.save_all(cluster, wanted)
        warnings = instance_types.fit_warnings(cluster, saved)
        data = [
            {**item, "warning": warnings.get(item["name"], "")}
            for item in ClusterInstanceTypeSerializer(saved, many=True).data
        ]
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: InstanceType) -> None:
        instance_types.delete(self.cluster(), instance.name)
