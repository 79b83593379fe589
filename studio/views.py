from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from studio import access, services
from studio.forms import AddMemberForm, NewWorkspaceForm
from studio.models import Role


@login_required
def home(request: HttpRequest) -> HttpResponse:
    workspaces = list(access.visible_workspaces(request.user))
    if len(workspaces) == 1:
        return redirect("jobs:list", workspace=workspaces[0].name)
    return render(request, "studio/home.html", {"workspaces": workspaces})


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # Never a traceback: the details are in the server log.
    if _wants_json(request):
        return JsonResponse(
            {"detail": "Internal error; the details are in the server log."}, status=500
        )
    return render(request, "500.html", status=500)


# -- workspaces and members ------------------------------------------------------------------
@login_required
def members(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, can_manage = access.members_of(request.user, workspace)
    form = AddMemberForm(request.POST or None, workspace=ws)
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied("Only the workspace's owners may change its members.")
        if form.is_valid() and (member := form.save()) is not None:
            messages.success(request, f"{member.user.username} added as {member.role}.")
            return redirect("members", workspace=ws.name)
    context = {
        "workspace": ws,
        "can_manage": can_manage,
        "memberships": ws.memberships.select_related("user").order_by("user__username"),
        "roles": Role.choices,
        "form": form,
    }
    return render(request, "studio/members.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def member_change(request: HttpRequest, workspace: str, username: str) -> HttpResponse:
    """Change a member's role, or remove them (the `remove` button)."""
    ws, can_manage = access.members_of(request.user, workspace)
    if not can_manage:
        raise PermissionDenied("Only the workspace's owners may change its members.")
    membership = get_object_or_404(ws.memberships, user__username=username)
    try:
        if "remove" in request.POST:
            services.remove_member(membership)
            messages.success(request, f"{username} removed from {ws.name}.")
        else:
            services.change_role(membership, request.POST.get("role", ""))
            messages.success(request, f"{username} is now {membership.role}.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("members", workspace=ws.name)


@login_required
def workspace_new(request: HttpRequest) -> HttpResponse:
    if not access.is_it_ops(request.user):
        raise PermissionDenied("Only IT-ops may create workspaces.")
    form = NewWorkspaceForm(request.POST or None, initial={"owner": request.user.get_username()})
    if request.method == "POST" and form.is_valid() and (ws := form.save()) is not None:
        messages.success(request, f"Workspace {ws.name} created with compute target local.")
        return redirect("compute:console")
    return render(
        request,
        "compute/form.html",
        {"form": form, "title": "New workspace"},
        status=400 if form.errors else 200,
    )
