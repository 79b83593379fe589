"""Who may do what. Every surface (pages, API, websockets, CLI through the API) asks here.

A workspace a user is not a member of does not exist for them: lookups answer 404,
never 403, so names do not leak. IT-ops is a global role that manages compute.
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import F, FilteredRelation, Q, QuerySet
from django.http import Http404

from studio.models import Membership, Role, Workspace

IT_OPS_GROUP = "it-ops"
_RANK = {Role.READER: 0, Role.CONTRIBUTOR: 1, Role.OWNER: 2}

# request.user, scope["user"]: a User, an AnonymousUser, or None from a bad token.
AnyUser = Any


def is_it_ops(user: AnyUser) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name=IT_OPS_GROUP).exists()


def visible_workspaces(user: AnyUser) -> QuerySet[Workspace]:
    if not user.is_authenticated:
        return Workspace.objects.none()
    return Workspace.objects.filter(memberships__user=user)


def with_default_compute(workspaces: QuerySet[Workspace]) -> QuerySet[Workspace]:
    """Each workspace with `default_compute`, its default compute target's name, in the
    same query. Named through the relation the compute app adds, so the core never imports
    it."""
    return workspaces.annotate(
        _default=FilteredRelation("computes", condition=Q(computes__is_default=True)),
        default_compute=F("_default__name"),
    )


def can(role: str | None, needed: str) -> bool:
    return role is not None and _RANK[Role(role)] >= _RANK[Role(needed)]


def workspace_for(user: AnyUser, name: str, needed: str = Role.READER) -> tuple[Workspace, str]:
    """The workspace named `name` and the user's role in it, or 404 / 403."""
    membership = (
        Membership.objects.select_related("workspace")
        .filter(workspace__name=name, user=user)
        .first()
        if user.is_authenticated
        else None
    )
    if membership is None:
        raise Http404("No such workspace.")
    if not can(membership.role, needed):
        raise PermissionDenied(f"This needs the {needed} role in workspace {name!r}.")
    return membership.workspace, membership.role


def members_of(user: AnyUser, name: str) -> tuple[Workspace, bool]:
    """The workspace, and whether this user may change its members: its owners, and IT-ops
    in any workspace (as the API's members endpoint allows). Non-members get 404."""
    if is_it_ops(user):
        workspace = Workspace.objects.filter(name=name).first()
        if workspace is None:
            raise Http404("No such workspace.")
        return workspace, True
    workspace, role = workspace_for(user, name)
    return workspace, can(role, Role.OWNER)
