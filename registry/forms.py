"""The model form of the studio's pages: a path (a job's output, a run's artifacts, a
datastore path), or files uploaded from the browser."""

from django import forms

from data.forms import MultipleFileField, MultipleFileInput
from registry.models import ModelType


class ModelForm(forms.Form):
    name = forms.CharField(max_length=255)
    version = forms.CharField(max_length=64, required=False, help_text="Default: the next number.")
    type = forms.ChoiceField(choices=ModelType.choices, initial=ModelType.CUSTOM)
    path = forms.CharField(
        max_length=2000,
        required=False,
        help_text="azureml://jobs/<job>/outputs/<output>[/paths/<path>] (artifacts: the job's "
        "./outputs), runs:/<run id>/<path>, or azureml://datastores/<name>/paths/<path>; or "
        "leave empty and upload files.",
    )
    upload = MultipleFileField(
        required=False,
        widget=MultipleFileInput(attrs={"multiple": True}),
        help_text="One file is the model; several are its folder.",
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if bool(data.get("path")) == bool(data.get("upload")):
            raise forms.ValidationError("Give a path or upload files (one of them).")
        return data
