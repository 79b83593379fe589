from typing import Any

from django.db.models import QuerySet
from rest_framework import viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.serializers import BaseSerializer

from compute import clusters, services
from compute.api.serializers import ComputeTargetSerializer, InstanceTypeSerializer
from compute.models import ComputeKind, ComputeTarget, InstanceType
from studio.api import IsItOpsOrReadOnly, WorkspaceMixin


class ComputeTargetViewSet(WorkspaceMixin, viewsets.ModelViewSet[ComputeTarget]):
    """The workspace's compute targets: members read them, IT-ops manage them."""

    serializer_class = ComputeTargetSerializer
    permission_classes = (IsAuthenticated, IsItOpsOrReadOnly)
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    it_ops_manage = True

    def get_queryset(self) -> QuerySet[ComputeTarget]:
        return ComputeTarget.objects.filter(workspace=self.get_workspace())

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if "workspace" in self.kwargs:
            context["workspace"] = self.get_workspace()
        return context

    def perform_create(self, serializer: BaseSerializer[ComputeTarget]) -> None:
        data = dict(serializer.validated_data)
        create_namespace = data.pop("create_namespace", False)
        if data["kind"] == ComputeKind.KUBERNETES:
            # Checked with the cluster (the namespace exists, or is made) before it is kept.
            serializer.instance = clusters.attach(
                self.get_workspace(),
                data["name"],
                data.get("cluster"),
                data.get("namespace") or "default",
                create_namespace=create_namespace,
                description=data.get("description", ""),
                image_pull_secret=data.get("image_pull_secret", ""),
                kubeconfig=data.get("kubeconfig", ""),
                context=data.get("context", ""),
            )
            return
        services.became_available(serializer.save(workspace=self.get_workspace()))

    def perform_destroy(self, instance: ComputeTarget) -> None:
        services.delete_compute(instance)


class InstanceTypeViewSet(viewsets.ModelViewSet[InstanceType]):
    """Instance types (the InstanceType CRD's fields): everyone reads, IT-ops manage."""

    queryset = InstanceType.objects.filter(cluster=None)  # the local host's set
    serializer_class = InstanceTypeSerializer
    permission_classes = (IsAuthenticated, IsItOpsOrReadOnly)
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def perform_destroy(self, instance: InstanceType) -> None:
        services.delete_instance_type(instance)
