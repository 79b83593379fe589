from typing import Any

from django import forms

from compute.models import ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE
from studio.models import Workspace

EXAMPLE = """$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
command: echo "hello world"
environment:
  image: library/python:latest
"""


class InstanceTypeChoice(forms.ModelChoiceField[InstanceType]):
    """Shows the limits next to the name, so the choice is an informed one."""

    def label_from_instance(self, obj: InstanceType) -> str:
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
    instance_type = InstanceTypeChoice(
        queryset=InstanceType.objects.all(),
        to_field_name="name",
        required=False,
        empty_label=f"As in the YAML (else {DEFAULT_INSTANCE_TYPE})",
    )
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
