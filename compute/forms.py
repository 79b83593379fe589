from typing import Any

import yaml
from django import forms
from django.core.exceptions import ValidationError

from compute.models import Cluster, ComputeKind, ComputeTarget, InstanceType
from compute.resources import validate_node_selector, validate_resources
from studio.documents import DocumentError, load_bounded

QUANTITY_FIELDS = [
    (section, resource, f"{section}_{resource.replace('nvidia.com/', '')}")
    for section in ("requests", "limits")
    for resource in ("cpu", "memory", "nvidia.com/gpu")
]


class ComputeTargetForm(forms.ModelForm[ComputeTarget]):
    class Meta:
        model = ComputeTarget
        fields = ("name", "kind", "description")
        labels = {"kind": "Type"}

    def __init__(self, *args: Any, workspace: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.workspace = workspace
        # Kubernetes targets are made by attaching a cluster (with its namespace), and a
        # target's type does not change.
        kind = self.fields["kind"]
        assert isinstance(kind, forms.ChoiceField)
        if self.instance.pk:
            kind.choices = [(self.instance.kind, self.instance.get_kind_display())]
        else:
            kind.choices = [(ComputeKind.LOCAL.value, ComputeKind.LOCAL.label)]
        kind.help_text = "For Kubernetes, use “Attach a cluster” in the console."

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        clash = ComputeTarget.objects.filter(workspace=self.instance.workspace, name=name)
        if self.instance.pk:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise ValidationError(f"A compute target named {name!r} already exists here.")
        return name


class InstanceTypeForm(forms.ModelForm[InstanceType]):
    """The CRD's fields, one input per quantity rather than a JSON blob."""

    node_selector_text = forms.CharField(
        label="nodeSelector",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "code"}),
        help_text="YAML mapping of node labels, e.g. <code>kubernetes.io/arch: amd64</code>",
    )
    requests_cpu = forms.CharField(label="requests.cpu", required=False)
    requests_memory = forms.CharField(label="requests.memory", required=False)
    requests_gpu = forms.CharField(label="requests.nvidia.com/gpu", required=False)
    limits_cpu = forms.CharField(label="limits.cpu", required=False)
    limits_memory = forms.CharField(label="limits.memory", required=False)
    limits_gpu = forms.CharField(label="limits.nvidia.com/gpu", required=False)

    class Meta:
        model = InstanceType
        fields = ("name", "description")

    def __init__(self, *args: Any, cluster: Cluster | None = None, **kwargs: Any) -> None:
        """`cluster`: one of a cluster's set (saved there by the view), else the local
        host's."""
        super().__init__(*args, **kwargs)
        self.cluster = cluster
        if self.instance.pk:
            self.fields["name"].disabled = True
            if self.instance.node_selector:
                self.fields["node_selector_text"].initial = yaml.safe_dump(
                    self.instance.node_selector, default_flow_style=False
                )
            for section, resource, field in QUANTITY_FIELDS:
                value = (self.instance.resources.get(section) or {}).get(resource)
                if value is not None:
                    self.fields[field].initial = value

    def clean_name(self) -> str:
        """Unique within its set (the local host's, or its cluster's)."""
        name: str = self.cleaned_data["name"]
        taken = InstanceType.objects.filter(cluster=self.cluster, name=name)
        if self.instance.pk:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise ValidationError(f"An instance type named {name!r} already exists.")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        resources: dict[str, dict[str, Any]] = {}
        for section, resource, field in QUANTITY_FIELDS:
            value: Any = (data.get(field) or "").strip()
            if resource == "nvidia.com/gpu" and value.isdigit():
                value = int(value)  # a count: the CRD's schema takes an integer
            if value != "":
                resources.setdefault(section, {})[resource] = value
        try:
            validate_resources(resources)
        except ValidationError as exc:
            for message in exc.messages:
                path = message.split(":", 1)[0]  # resources.limits.cpu
                parts = path.split(".", 2)
                target = None
                if len(parts) == 3:
                    target = f"{parts[1]}_{parts[2].replace('nvidia.com/', '')}"
                self.add_error(target if target in self.fields else None, message)
        self.instance.resources = resources
        try:
            selector = load_bounded(data.get("node_selector_text") or "") or {}
            validate_node_selector(selector)
            self.instance.node_selector = selector
        except (DocumentError, ValidationError):
            self.add_error("node_selector_text", "Must be a YAML mapping of label: value strings.")
        return data


class ClusterForm(forms.Form):
    """Register a cluster: its kubeconfig pasted or uploaded, and which context."""

    name = forms.CharField(max_length=255)
    kubeconfig = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "class": "code", "spellcheck": "false"}),
        help_text="Paste it, or upload the file below. Kept encrypted; never shown again.",
    )
    kubeconfig_file = forms.FileField(label="…or upload a kubeconfig", required=False)
    context = forms.CharField(required=False, help_text="Default: the kubeconfig's current one.")
    studio_url = forms.URLField(
        assume_scheme="http",
        label="Studio URL for the cluster's pods",
        required=False,
        help_text="How pods reach this studio (default: STUDIO_PUBLIC_URL).",
    )
    description = forms.CharField(required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("kubeconfig_file"):
            data["kubeconfig"] = data["kubeconfig_file"].read().decode("utf-8", errors="replace")
        return data


class AdminActForm(forms.Form):
    """A cluster admin's kubeconfig for an act that changes the studio's rights."""

    kubeconfig = forms.CharField(
        required=False,
        label="A cluster admin's kubeconfig",
        widget=forms.Textarea(attrs={"rows": 4, "class": "code", "spellcheck": "false"}),
        help_text="Used for this act only, not kept. Needed once the studio holds only the "
        "extension's own credentials.",
    )
    context = forms.CharField(required=False, help_text="Default: the kubeconfig's current one.")


class AttachForm(AdminActForm):
    """Attach a registered cluster to a workspace, with the namespace its work runs in."""

    field_order = ("name", "cluster", "namespace", "create_namespace", "image_pull_secret",
                   "description", "kubeconfig", "context")  # fmt: skip

    name = forms.CharField(max_length=255, help_text="The compute target's name, e.g. k8s.")
    cluster = forms.ChoiceField()
    namespace = forms.CharField(initial="default", max_length=63)
    create_namespace = forms.BooleanField(required=False, label="Create it if it is missing")
    image_pull_secret = forms.CharField(
        required=False, max_length=253,
        help_text="A Secret in the namespace that pods pull private images with (optional).",
    )  # fmt: skip
    description = forms.CharField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice = self.fields["cluster"]
        assert isinstance(choice, forms.ChoiceField)
        choice.choices = [(c.name, c.name) for c in Cluster.objects.all()]
        self.fields["kubeconfig"].help_text = (
            "Only for a namespace the extension does not reach yet, once the studio holds only "
            "the extension's credentials: the studio is granted it with this. Used once, not kept."
        )


class ExtensionForm(AdminActForm):
    field_order = ("settings", "kubeconfig", "context")
    settings = forms.CharField(
        required=False,
        label="Settings",
        widget=forms.Textarea(attrs={"rows": 3, "class": "code", "spellcheck": "false"}),
        help_text="One key=value a line, as Azure's extension names them: enableTraining, "
        "enableInference, nodeSelector.&lt;key&gt;, inferenceRouterServiceType, "
        "inferenceRouterHA, allowInsecureConnections, sslSecret, sslCname.",
    )


class InstanceTypeYamlForm(forms.Form):
    document = forms.CharField(
        label="InstanceType YAML",
        widget=forms.Textarea(attrs={"rows": 12, "class": "code", "spellcheck": "false"}),
        help_text="An InstanceType or an InstanceTypeList (kstudio.io/v1alpha1 or Azure's "
        "amlarc.azureml.com/v1alpha1), as you would `kubectl apply`.",
    )
