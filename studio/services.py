"""Workspaces and their members, called alike by the console, the members page and the API.

Problems raise Django's ValidationError keyed by the field they concern, so every surface
shows them next to that field (forms) or as {field, message} (API).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from studio import events
from studio.models import ApiToken, Membership, Role, Workspace


def set_up(workspace: Workspace) -> None:
    """What each app gives a workspace it did not have: STUDIO_WORKSPACE_SETUP names the
    functions (compute's gives it a local compute target). Idempotent."""
    for path in settings.STUDIO_WORKSPACE_SETUP:
        import_string(path)(workspace)


def create_workspace(name: str, description: str = "", owner: Any = None) -> Workspace:
    """A new workspace, set up by each app (a local compute target), and its first owner."""
    workspace = Workspace(name=name, description=description)
    # Checks the name's shape and that it is free, with the model's own messages.
    workspace.full_clean()
    try:
        with transaction.atomic():
            workspace.save()
            set_up(workspace)
            if owner is not None:
                Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    except IntegrityError as exc:  # created by someone else since the check
        raise ValidationError({"name": f"a workspace named {name!r} already exists"}) from exc
    workspace.refresh_from_db()
    return workspace


def user_named(username: str, field: str = "username") -> Any:
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ValidationError({field: f"no active user named {username!r}"})
    return user


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise ValidationError({"role": f"must be one of {', '.join(Role.values)}, not {role!r}"})


def add_member(workspace: Workspace, username: str, role: str) -> Membership:
    _check_role(role)
    user = user_named(username)
    try:
        with transaction.atomic():
            return Membership.objects.create(workspace=workspace, user=user, role=role)
    except IntegrityError as exc:
        raise ValidationError(
            {"username": f"{username} is already a member; change their role instead"}
        ) from exc


def _keep_an_owner(membership: Membership) -> None:
    """A workspace without an owner could not be managed by anyone in it."""
    others = Membership.objects.filter(workspace=membership.workspace_id, role=Role.OWNER)
    if membership.role == Role.OWNER and not others.exclude(pk=membership.pk).exists():
        raise ValidationError({"role": "a workspace keeps at least one owner"})


def _lock_owners(workspace_id: int) -> None:
    """Two owners demoting each other at once must not leave none (PostgreSQL row locks;
    SQLite's write transactions are serialized already)."""
    list(
        Membership.objects.select_for_update()
        .filter(workspace=workspace_id, role=Role.OWNER)
        .values_list("pk", flat=True)
    )


def change_role(membership: Membership, role: str) -> Membership:
    _check_role(role)
    with transaction.atomic():
        _lock_owners(membership.workspace_id)
        membership.refresh_from_db(fields=["role"])
        if role != Role.OWNER:
            _keep_an_owner(membership)
        membership.role = role
        membership.save(update_fields=["role"])
        events.publish(events.access_changed(membership.user_id))
    return membership


def remove_member(membership: Membership) -> None:
    with transaction.atomic():
        _lock_owners(membership.workspace_id)
        membership.refresh_from_db(fields=["role"])
        _keep_an_owner(membership)
        membership.delete()
        events.publish(events.access_changed(membership.user_id))


# -- API tokens -------------------------------------------------------------------------------
MAX_TOKEN_DAYS = 3650


def issue_token(user: Any, name: str, expires_in_days: int | None) -> tuple[ApiToken, str]:
    """A new token for the user; the key is returned once and never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "give the token a name, so you know it later"})
    if len(name) > 100:
        raise ValidationError({"name": "at most 100 characters"})
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise ValidationError(
            {"expires_in_days": f"must be between 1 and {MAX_TOKEN_DAYS}, or empty for never"}
        )
    expires_at = (
        timezone.now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    )
    return ApiToken.issue(user, name, expires_at)


def tokens_of(user: Any) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)


def revoke_token(token: ApiToken) -> None:
    """The token stops working at once, its open sockets included."""
    with transaction.atomic():
        token.delete()
        events.publish(events.access_changed(token.user_id))
