from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.core.exceptions import ValidationError

from studio import services
from studio.models import Role, Workspace

T = TypeVar("T")


def run_service(form: forms.Form, action: Callable[[], T]) -> T | None:
    """Call a domain service for a valid form. The service's field-keyed errors land on
    the form's fields, so the page shows them where the user typed; None then."""
    try:
        return action()
    except ValidationError as exc:
        form.add_error(None, exc)
        return None


class NewWorkspaceForm(forms.Form):
    name = forms.CharField(max_length=255)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    owner = forms.CharField(max_length=150, help_text="Username of the workspace's first owner.")

    def save(self) -> Workspace | None:
        data = self.cleaned_data
        return run_service(
            self,
            lambda: services.create_workspace(
                data["name"], data["description"], services.user_named(data["owner"], "owner")
            ),
        )


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.CONTRIBUTOR)

    def __init__(self, *args: Any, workspace: Workspace, by: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        self.by = by

    def save(self) -> services.Member | None:
        data = self.cleaned_data
        return run_service(
            self,
            lambda: services.add_member(self.workspace, data["username"], data["role"], self.by),
        )


class NewTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Where you will use it: a laptop, CI.")
    expires_in_days = forms.TypedChoiceField(
        label="Expires",
        choices=[("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year"), ("", "never")],
        coerce=int,
        empty_value=None,
        required=False,
        initial="90",
    )
