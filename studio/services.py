"""Workspaces and their members, called alike by the console, the members page and the API.

Problems raise Django's ValidationError keyed by the field they concern, so every surface
shows them next to that field (forms) or as {field, message} (API).
"""

from __future__ import annotations

from dataclasses import dataclass
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
from studio.access import is_it_ops
from studio.models import ApiToken, Invitation, Membership, Role, Workspace


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


@dataclass
class Member:
    """A membership or an invitation, as pages and the API show them: alike."""

    username: str
    role: str
    record: Membership | Invitation

    def get_role_display(self) -> str:
        return str(Role(self.role).label)


def _member(record: Membership | Invitation) -> Member:
    name = record.user.username if isinstance(record, Membership) else record.username
    return Member(name, record.role, record)


def members(workspace: Workspace) -> list[Member]:
    found: list[Membership | Invitation] = [
        *Membership.objects.filter(workspace=workspace).select_related("user"),
        *Invitation.objects.filter(workspace=workspace),
    ]
    return sorted((_member(r) for r in found), key=lambda m: m.username)


def member_named(workspace: Workspace, username: str) -> Member | None:
    record: Membership | Invitation | None = (
        workspace.memberships.select_related("user").filter(user__username=username).first()
        or workspace.invitations.filter(username=username).first()
    )
    return _member(record) if record is not None else None


def add_member(workspace: Workspace, username: str, role: str, by: Any = None) -> Member:
    """Add a user by name. IT-ops (and the studio's own commands: `by` None) are told when
    no such user exists; an owner who is not IT-ops is not, so that adding members cannot
    list the studio's accounts: the name is invited, and joins when its account is made."""
    _check_role(role)
    if len(username) > 150 or not username.strip():
        raise ValidationError({"username": "a user name is 1 to 150 characters"})
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None and (by is None or is_it_ops(by)):
        raise ValidationError({"username": f"no active user named {username!r}"})
    taken = ValidationError(
        {"username": f"{username} is already a member; change their role instead"}
    )
    if workspace.invitations.filter(username=username).exists():
        raise taken
    try:
        with transaction.atomic():
            if user is None:
                return _member(
                    Invitation.objects.create(workspace=workspace, username=username, role=role)
                )
            return _member(Membership.objects.create(workspace=workspace, user=user, role=role))
    except IntegrityError as exc:
        raise taken from exc


def accept_invitations(user: Any) -> None:
    """A new account takes up the invitations made to its name."""
    with transaction.atomic():
        for invitation in Invitation.objects.filter(username=user.get_username()):
            Membership.objects.get_or_create(
                workspace=invitation.workspace, user=user, defaults={"role": invitation.role}
            )
            invitation.delete()
    events.publish(events.access_changed(user.pk))


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


def _record(member: Member | Membership | Invitation) -> Membership | Invitation:
    return member.record if isinstance(member, Member) else member


def change_role(member: Member | Membership | Invitation, role: str) -> Member:
    _check_role(role)
    record = _record(member)
    if isinstance(record, Invitation):
        record.role = role
        record.save(update_fields=["role"])
        return _member(record)
    with transaction.atomic():
        _lock_owners(record.workspace_id)
        record.refresh_from_db(fields=["role"])
        if role != Role.OWNER:
            _keep_an_owner(record)
        record.role = role
        record.save(update_fields=["role"])
        events.publish(events.access_changed(record.user_id))
    return _member(record)


def remove_member(member: Member | Membership | Invitation) -> None:
    record = _record(member)
    if isinstance(record, Invitation):
        record.delete()
        return
    with transaction.atomic():
        _lock_owners(record.workspace_id)
        record.refresh_from_db(fields=["role"])
        _keep_an_owner(record)
        record.delete()
        events.publish(events.access_changed(record.user_id))


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
