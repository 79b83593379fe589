from typing import Any

from django import forms
from django.db.models import Q

from compute.models import ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE
from studio.models import Workspace

EXAMPLE = """$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
command: echo "hello world"
environment:
  image: library/python:latest
"""


def instance_type_label(obj: InstanceType) -> str:
    """The limits next to the name, so the choice is an informed one."""
    limits = ", ".join(f"{k} {v}" for k, v in obj.limits.items())
    return f"{obj.name} ({limits})" if limits else obj.name


class SubmitJobForm(forms.Form):
    # Left at "as in the YAML", the job's own `compute` and `resources.instance_type`
    # apply (checked like the CLI's); a choice made here replaces them, as --set would.
    compute = forms.ModelChoiceField(
        queryset=ComputeTarget.objects.none(),
        to_field_name="name",
        required=False,
        empty_label="As in the YAML (else the workspace default)",
    )
    # Each compute target offers its cluster's instance types (the local host's set for
    # local ones): grouped by target; submitting checks the name against the target's.
    instance_type = forms.ChoiceField(required=False)
    spec = forms.CharField(
        label="Job YAML",
        required=False,
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false", "class": "code"}),
        help_text="An Azure ML CLI v2 command job. A compute target or instance type chosen "
        "above replaces the one in the YAML.",
    )
    spec_file = forms.FileField(label="…or upload a YAML file", required=False)
    code = forms.FileField(
        label="Code archive (.zip or .tar.gz), when the job has code:", required=False
    )

    def __init__(self, workspace: Workspace, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        compute_field = self.fields["compute"]
        assert isinstance(compute_field, forms.ModelChoiceField)
        compute_field.queryset = workspace.computes.all()
        groups: dict[str, list[tuple[str, str]]] = {}
        clusters = workspace.computes.values("cluster")
        types = InstanceType.objects.filter(Q(cluster__in=clusters) | Q(cluster=None))
        by_cluster: dict[int | None, list[InstanceType]] = {}
        for instance_type in types.order_by("name"):
            by_cluster.setdefault(instance_type.cluster_id, []).append(instance_type)
        for target in workspace.computes.all():
            offered = by_cluster.get(target.cluster_id, [])
            groups[target.name] = [(t.name, instance_type_label(t)) for t in offered]
        choice = self.fields["instance_type"]
        assert isinstance(choice, forms.ChoiceField)
        grouped = [(f"Offered by {name}", items) for name, items in groups.items()]
        choice.choices = [("", f"As in the YAML (else {DEFAULT_INSTANCE_TYPE})"), *grouped]
        self.fields["spec"].initial = EXAMPLE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("spec_file"):
            data["spec"] = data["spec_file"].read().decode("utf-8", errors="replace")
            # Shown in the editor if the job is refused, so that "line 3" points at
            # text the user can see.
            self.data = {**self.data.dict(), "spec": data["spec"]}  # type: ignore[attr-defined]
        if not (data.get("spec") or "").strip():
            self.add_error("spec", "Paste a job YAML or upload a file.")
        return data
