from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from studio import services
from studio.models import Membership, Role, Workspace


class ServiceForm(forms.Form):
    """A form whose save() calls a domain service; the service's field errors land on
    the form's fields, so the page shows them where the user typed."""

    def save(self) -> Any:
        try:
            return self.perform(self.cleaned_data)
        except ValidationError as exc:
            self.add_error(None, exc)
            return None

    def perform(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError


class NewWorkspaceForm(ServiceForm):
    name = forms.CharField(max_length=255)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    owner = forms.CharField(max_length=150, help_text="Username of the workspace's first owner.")

    def perform(self, data: dict[str, Any]) -> Workspace:
        owner = services.user_named(data["owner"], "owner")
        return services.create_workspace(data["name"], data["description"], owner)


class AddMemberForm(ServiceForm):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.CONTRIBUTOR)

    def __init__(self, *args: Any, workspace: Workspace, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workspace = workspace

    def perform(self, data: dict[str, Any]) -> Membership:
        return services.add_member(self.workspace, data["username"], data["role"])
