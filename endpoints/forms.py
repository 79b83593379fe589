"""The endpoint pages' forms: a new endpoint, a new deployment (a registered model, the
scoring script's files), the traffic split, and the test console."""

from __future__ import annotations

from typing import Any

from django import forms

from data.forms import MultipleFileField, MultipleFileInput


class EndpointForm(forms.Form):
    name = forms.CharField(max_length=32, help_text="3 to 32 letters, digits and '-'.")
    auth_mode = forms.ChoiceField(choices=[("key", "key"), ("aml_token", "aml_token")])
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class DeploymentForm(forms.Form):
    name = forms.CharField(max_length=32, initial="blue")
    model = forms.ChoiceField(help_text="A registered model version.")
    scoring_script = forms.CharField(
        required=False, initial="score.py",
        help_text="Empty for an MLflow model, which needs none.",
    )  # fmt: skip
    code = MultipleFileField(
        required=False, widget=MultipleFileInput(attrs={"multiple": True}),
        help_text="The scoring script and what it imports.",
    )  # fmt: skip
    instance_count = forms.IntegerField(min_value=1, max_value=20, initial=1)
    all_traffic = forms.BooleanField(required=False, label="Send it all the traffic")

    def __init__(self, *args: Any, models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(m, m) for m in models]


class ConsoleForm(forms.Form):
    request = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "class": "code", "spellcheck": "false"}),
        initial='{"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}',
    )
    deployment = forms.CharField(required=False)


class BatchEndpointForm(forms.Form):
    name = forms.CharField(max_length=32, help_text="3 to 32 letters, digits and '-'.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class BatchDeploymentForm(forms.Form):
    name = forms.CharField(max_length=32)
    model = forms.ChoiceField(help_text="A registered model version.")
    compute = forms.ChoiceField()
    scoring_script = forms.CharField(
        required=False, initial="batch_driver.py",
        help_text="Empty for an MLflow model, which needs none.",
    )  # fmt: skip
    code = MultipleFileField(
        required=False, widget=MultipleFileInput(attrs={"multiple": True}),
        help_text="The scoring script and what it imports.",
    )  # fmt: skip
    mini_batch_size = forms.IntegerField(min_value=1, initial=10, help_text="Files per mini-batch.")
    max_concurrency_per_instance = forms.IntegerField(min_value=1, max_value=64, initial=1)
    error_threshold = forms.IntegerField(
        min_value=-1, initial=-1, help_text="Failed files tolerated; -1 tolerates all."
    )
    output_file_name = forms.CharField(initial="predictions.csv")
    set_default = forms.BooleanField(required=False, label="Make it the default")

    def __init__(self, *args: Any, models: list[str], computes: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, choices in (("model", models), ("compute", computes)):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [(c, c) for c in choices]


class InvokeForm(forms.Form):
    deployment = forms.ChoiceField(required=False, help_text="Empty: the default deployment.")
    input = forms.CharField(
        required=False, max_length=2000,
        help_text="A data asset (azureml:name:version) or a datastore path; or upload files.",
    )  # fmt: skip
    upload = MultipleFileField(
        required=False, label="Or files", widget=MultipleFileInput(attrs={"multiple": True})
    )
    mini_batch_size = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args: Any, deployments: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["deployment"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "(default)")] + [(d, d) for d in deployments]
