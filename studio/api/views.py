from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers, viewsets

from studio import access
from studio.models import Workspace


class WorkspaceSerializer(serializers.ModelSerializer[Workspace]):
    default_compute: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = Workspace
        fields = ("name", "description", "default_compute", "created_at")


class WorkspaceViewSet(viewsets.ReadOnlyModelViewSet[Workspace]):
    serializer_class = WorkspaceSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Workspace]:
        return access.visible_workspaces(self.request.user).select_related("default_compute")
