"""What every versioned asset of a workspace (data, environments, models) does alike: the
next version's number, a version by name (`latest` when none is given), each asset's
latest version, a version registered from its page's form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.db.models import Count, OuterRef, QuerySet, Subquery

from studio.errors import Conflict, FieldErrors
from studio.models import VersionedAsset, Workspace

A = TypeVar("A", bound=VersionedAsset)


def next_version(model: type[A], workspace: Workspace, name: str) -> str:
    """Azure's rule: one more than the highest numeric version (1 for a new asset)."""
    versions = model._default_manager.filter(workspace=workspace, name=name).values_list(
        "version", flat=True
    )
    return str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)


def new_version(model: type[A], workspace: Workspace, name: str, version: str | int | None) -> str:
    """The version a registration makes: the one given, else the next number. Conflict
    when it exists: a version never changes."""
    chosen = str(version or next_version(model, workspace, name))
    if model._default_manager.filter(workspace=workspace, name=name, version=chosen).exists():
        what = str(model._meta.verbose_name).capitalize()
        raise Conflict(
            f"{what} {name}:{chosen} already exists; a version never changes "
            "(omit version for the next one)."
        )
    return chosen


def find(model: type[A], workspace: Workspace, name: str, version: str | None) -> A:
    """A version (None: the latest made), or ValueError in the user's words."""
    what = str(model._meta.verbose_name)
    found = model._default_manager.filter(workspace=workspace, name=name)
    chosen = found.filter(version=version) if version else found.order_by("-created_at", "-id")
    asset = chosen.first()
    if asset is None:
        if version and found.exists():
            raise ValueError(f"{what} {name!r} has no version {version!r}")
        raise ValueError(f"no {what} named {name!r} in this workspace")
    return asset


def latest(model: type[A], workspace: Workspace) -> QuerySet[Any]:
    """Each asset's latest version, annotated with `versions`, its count: one query."""
    same = model._default_manager.filter(workspace=workspace, name=OuterRef("name"))
    count = same.values("name").annotate(n=Count("id")).values("n")
    newest = same.order_by("-created_at", "-id").values("pk")[:1]
    return (
        model._default_manager.filter(workspace=workspace, pk=Subquery(newest))
        .annotate(versions=Subquery(count))
        .order_by("name")
    )


def register_from_form(
    form: forms.Form, create: Callable[[dict[str, Any], list[Any]], A]
) -> tuple[A | None, list[tuple[str, str]]]:
    """A version from its registration page (a valid form with name, version, type, path,
    description and upload): `create` gets the fields given and the uploaded files. What
    is wrong comes back by field; a version that exists already is the version's."""
    fields = ("name", "version", "type", "path", "description")
    data = {key: form.cleaned_data[key] for key in fields if form.cleaned_data[key]}
    try:
        return create(data, form.cleaned_data["upload"]), []
    except FieldErrors as exc:
        return None, exc.errors
    except Conflict as exc:
        return None, [("version", str(exc))]
