import math
from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from studio import access, services, throttles
from studio.forms import AddMemberForm, NewTokenForm, NewWorkspaceForm
from studio.models import Role


class SignInView(auth_views.LoginView):
    """Django's sign-in, with attempts rate-limited per address and per username."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        wait = throttles.sign_in_wait(request)
        if wait is not None:
            context = {"form": self.get_form(), "wait": math.ceil(wait)}
            response = render(request, "registration/login.html", context, status=429)
            response["Retry-After"] = str(math.ceil(wait))
            return response
        return super().post(request, *args, **kwargs)


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
    form = AddMemberForm(request.POST or None, workspace=ws, by=request.user)
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied("Only the workspace's owners may change its members.")
        if form.is_valid() and (member := form.save()) is not None:
            messages.success(request, f"{member.username} added as {member.role}.")
            return redirect("members", workspace=ws.name)
    context = {
        "workspace": ws,
        "can_manage": can_manage,
        "memberships": services.members(ws),
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
    membership = services.member_named(ws, username)
    if membership is None:
        raise Http404("No such member.")
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


# -- the user's own API tokens ----------------------------------------------------------------
@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """The user's API tokens: create (the key is shown once), list, revoke."""
    form = NewTokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        wait = throttles.token_issue_wait(request)
        if wait is not None:
            messages.error(request, f"Too many new tokens; try again in {math.ceil(wait)} s.")
        else:
            try:
                token, new_key = services.issue_token(
                    request.user, form.cleaned_data["name"], form.cleaned_data["expires_in_days"]
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                form = NewTokenForm()
                messages.success(
                    request, f"Token {token.name} created. Copy it now: it is not shown again."
                )
    context = {
        "form": form,
        "new_key": new_key,
        "tokens": services.tokens_of(request.user),
    }
    return render(request, "studio/profile.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(services.tokens_of(request.user), pk=token_id)
    services.revoke_token(token)
    messages.success(request, f"Token {token.name} ({token.hint}…) revoked.")
    return redirect("profile")
