"""Clusters (IT-ops only): register from a kubeconfig, see whether it answers and what the
credentials may do, delete once nothing is attached. The kubeconfig is write-only."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from compute import clusters
from compute.models import Cluster
from studio.api import IsItOps


class ClusterSerializer(serializers.ModelSerializer[Cluster]):
    attachments = serializers.SerializerMethodField()

    class Meta:
        model = Cluster
        fields: tuple[str, ...] = (
            "name",
            "description",
            "server",
            "context",
            "in_cluster",
            "studio_url",
            "settings",
            "router_url",
            "credentials",
            "attachments",
            "created_at",
        )
        read_only_fields: tuple[str, ...] = fields

    def get_attachments(self, cluster: Cluster) -> list[str]:
        """Compute targets using it, as workspace/name."""
        return [f"{a.workspace.name}/{a.name}" for a in cluster.attachments.all()]


class NewClusterSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    kubeconfig = serializers.CharField(
        required=False, allow_blank=True, default="", trim_whitespace=False,
        help_text="The kubeconfig's YAML. Kept encrypted; never shown again.",
    )  # fmt: skip
    in_cluster = serializers.BooleanField(required=False, default=False)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    studio_url = serializers.URLField(
        required=False, allow_blank=True, default="",
        help_text="How this cluster's pods reach the studio (default STUDIO_PUBLIC_URL).",
    )  # fmt: skip

    def get_fields(self) -> dict[str, Any]:
        # `context` is the serializer's own attribute: this field cannot be declared as one.
        fields = super().get_fields()
        fields["context"] = serializers.CharField(
            required=False, allow_blank=True, default="", help_text="The kubeconfig's context."
        )
        return fields


class AdminActSerializer(serializers.Serializer[Any]):
    """An act that changes the studio's rights in the cluster: once the extension is in,
    the studio holds only its ServiceAccount's token, so a cluster admin's kubeconfig
    comes with the act (used once, not kept)."""

    kubeconfig = serializers.CharField(
        required=False, allow_blank=True, default="", trim_whitespace=False, write_only=True,
        help_text="A cluster admin's kubeconfig for this act; not kept. Needed once the "
        "studio holds only the extension's credentials.",
    )  # fmt: skip

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()  # `context`: as NewClusterSerializer's
        fields["context"] = serializers.CharField(
            required=False, allow_blank=True, default="", help_text="The kubeconfig's context."
        )
        return fields


class InstallSerializer(AdminActSerializer):
    set = serializers.ListField(
        child=serializers.CharField(), required=False, default=list,
        help_text="Settings as key=value: enableTraining, enableInference, nodeSelector.<key>, "
        "inferenceRouterServiceType, inferenceRouterHA, allowInsecureConnections, sslSecret, "
        "sslCname.",
    )  # fmt: skip


class AppliedSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField()
    name = serializers.CharField()
    outcome = serializers.CharField()


class InstallResultSerializer(serializers.Serializer[Any]):
    problems = serializers.ListField(child=serializers.CharField())
    applied = AppliedSerializer(many=True)


class UninstallResultSerializer(serializers.Serializer[Any]):
    removed = AppliedSerializer(many=True)


class ClusterStatusSerializer(serializers.Serializer[Any]):
    reachable = serializers.BooleanField()
    version = serializers.CharField()
    message = serializers.CharField()
    nodes_ready = serializers.IntegerField(allow_null=True)
    allowed = serializers.ListField(child=serializers.CharField())
    denied = serializers.ListField(child=serializers.CharField())


class ClusterDetailSerializer(ClusterSerializer):
    status = serializers.SerializerMethodField()

    class Meta(ClusterSerializer.Meta):
        fields = (*ClusterSerializer.Meta.fields, "status")
        read_only_fields = fields

    @extend_schema_field(ClusterStatusSerializer)
    def get_status(self, cluster: Cluster) -> dict[str, Any]:
        """Asked of the cluster now: version, reachability, what the credentials may do."""
        return clusters.status(cluster)


class ClusterViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Cluster],
):
    permission_classes = (IsAuthenticated, IsItOps)
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Cluster]:
        return Cluster.objects.prefetch_related("attachments__workspace")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return ClusterDetailSerializer if self.action == "retrieve" else ClusterSerializer

    @extend_schema(request=NewClusterSerializer, responses={201: ClusterSerializer})
    def create(self, request: Request) -> Response:
        """Register a cluster from a kubeconfig (and one of its contexts)."""
        data = NewClusterSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        cluster = clusters.register(**data.validated_data)
        return Response(ClusterSerializer(cluster).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Cluster) -> None:
        clusters.delete(instance)

    @extend_schema(request=InstallSerializer, responses=InstallResultSerializer)
    @action(detail=True, methods=["post"])
    def install(self, request: Request, name: str) -> Response:
        """Apply the extension (idempotent, server-side apply): the CRD, RBAC, namespaces.
        With problems found first (preflight), nothing is applied."""
        data = InstallSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        given = data.validated_data
        outcome = clusters.install(
            self.get_object(), given["set"], given["kubeconfig"], given["context"]
        )
        return Response({"problems": outcome.problems, "applied": outcome.applied})

    @extend_schema(responses={200: dict})
    @action(detail=True, methods=["get"])
    def nodes(self, request: Request, name: str) -> Response:
        """Each node (labels, taints, allocatable, requested now) and, per instance type,
        the nodes it fits and how many more of it each could take."""
        return Response(clusters.nodes_report(self.get_object()))

    @extend_schema(responses={(200, "application/yaml"): str})
    @action(detail=True, methods=["get"])
    def manifests(self, request: Request, name: str) -> HttpResponse:
        """The extension's objects as one YAML stream (for GitOps), applied as they are."""
        return HttpResponse(clusters.manifests(self.get_object()), content_type="application/yaml")

    @extend_schema(request=AdminActSerializer, responses=UninstallResultSerializer)
    @action(detail=True, methods=["post"])
    def uninstall(self, request: Request, name: str) -> Response:
        """Remove what install made (attached namespaces are kept: they hold work)."""
        data = AdminActSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        given = data.validated_data
        removed = clusters.uninstall(self.get_object(), given["kubeconfig"], given["context"])
        return Response({"removed": removed})
