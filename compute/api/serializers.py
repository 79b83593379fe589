from rest_framework import serializers

from compute.models import ComputeKind, ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE, validate_node_selector


class InstanceTypeSerializer(serializers.ModelSerializer[InstanceType]):
    """In the CRD's own words: nodeSelector and resources.requests / resources.limits."""

    nodeSelector = serializers.JSONField(
        source="node_selector", required=False, validators=[validate_node_selector]
    )

    class Meta:
        model = InstanceType
        fields = ("name", "description", "nodeSelector", "resources", "created_at")
        read_only_fields = ("created_at",)

    def validate_name(self, value: str) -> str:
        if (
            self.instance is not None
            and self.instance.name == DEFAULT_INSTANCE_TYPE
            and (value != DEFAULT_INSTANCE_TYPE)
        ):
            raise serializers.ValidationError(f"{DEFAULT_INSTANCE_TYPE} cannot be renamed.")
        return value


class ComputeTargetSerializer(serializers.ModelSerializer[ComputeTarget]):
    type = serializers.ChoiceField(source="kind", choices=ComputeKind.choices)
    instance_types = serializers.SerializerMethodField()

    class Meta:
        model = ComputeTarget
        fields = ("name", "type", "description", "instance_types", "created_at")
        read_only_fields = ("created_at",)

    def get_instance_types(self, compute: ComputeTarget) -> list[str]:
        return list(compute.instance_types().values_list("name", flat=True))

    def validate_name(self, value: str) -> str:
        workspace = self.context["workspace"]
        clash = ComputeTarget.objects.filter(workspace=workspace, name=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(
                f"a compute target named {value!r} already exists in this workspace."
            )
        return value
