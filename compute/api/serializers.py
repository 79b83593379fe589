from typing import Any

from rest_framework import serializers

from compute.models import Cluster, ComputeKind, ComputeTarget, InstanceType
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
        # Unique within the local host's set (other clusters may have the same name).
        taken = InstanceType.objects.filter(cluster=None, name=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError(f"an instance type named {value!r} already exists.")
        return value


# Azure's attach YAML has these; this studio has no Azure identities or resource ids.
AZURE_ONLY = ("identity", "resource_id")


class ComputeTargetSerializer(serializers.ModelSerializer[ComputeTarget]):
    type = serializers.ChoiceField(source="kind", choices=ComputeKind.choices)
    instance_types = serializers.SerializerMethodField()
    cluster: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", queryset=Cluster.objects.all(), required=False, allow_null=True,
        help_text="kubernetes: the registered cluster attached.",
    )  # fmt: skip
    namespace = serializers.CharField(
        required=False, allow_blank=True, help_text="kubernetes: where its work runs (default)."
    )
    create_namespace = serializers.BooleanField(
        write_only=True, required=False, default=False,
        help_text="kubernetes: create the namespace if it does not exist.",
    )  # fmt: skip
    image_pull_secret = serializers.CharField(
        required=False, allow_blank=True,
        help_text="kubernetes: a Secret in the namespace that pods pull images with.",
    )  # fmt: skip
    kubeconfig = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False,
        help_text="kubernetes: a cluster admin's kubeconfig, to grant the studio a namespace "
        "the extension does not reach yet (used once, never kept or shown).",
    )  # fmt: skip

    class Meta:
        model = ComputeTarget
        fields = (
            "name",
            "type",
            "description",
            "cluster",
            "namespace",
            "create_namespace",
            "image_pull_secret",
            "kubeconfig",
            "instance_types",
            "is_default",
            "problem",
            "created_at",
        )
        read_only_fields = ("created_at", "is_default", "problem")

    def get_fields(self) -> dict[str, Any]:
        # `context` is the serializer's own attribute: this field cannot be declared as one.
        fields = super().get_fields()
        fields["context"] = serializers.CharField(
            write_only=True, required=False, allow_blank=True,
            help_text="kubernetes: the context of `kubeconfig` (default: its current one).",
        )  # fmt: skip
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors = {
            name: f"Azure's {name} has no meaning here: leave it out"
            for name in AZURE_ONLY
            if name in (self.initial_data or {})
        }
        if (
            self.instance is not None
            and attrs.get("kind", self.instance.kind) != self.instance.kind
        ):
            errors["type"] = "a compute target's type cannot change; detach it and attach anew"
        if attrs.get("kind", getattr(self.instance, "kind", None)) != ComputeKind.KUBERNETES:
            for name in ("cluster", "namespace", "image_pull_secret", "kubeconfig"):
                if attrs.get(name):
                    errors[name] = "only for compute targets of type kubernetes"
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

    def create(self, validated_data: dict[str, Any]) -> ComputeTarget:
        for instruction in ("create_namespace", "kubeconfig", "context"):  # not fields
            validated_data.pop(instruction, None)
        return super().create(validated_data)

    def update(self, instance: ComputeTarget, validated_data: dict[str, Any]) -> ComputeTarget:
        for instruction in ("create_namespace", "kubeconfig", "context"):
            validated_data.pop(instruction, None)
        return super().update(instance, validated_data)

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
