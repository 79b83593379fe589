"""Studio pages for online endpoints: the list, an endpoint (its deployments, the traffic
split, its keys, a test console), and a deployment with its log."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from data.forms import folder_archive
from endpoints import router, services
from endpoints import traffic as counts
from endpoints.api.serializers import render_endpoint
from endpoints.forms import ConsoleForm, DeploymentForm, EndpointForm
from endpoints.models import Endpoint, State
from registry.models import Model
from studio import access
from studio.errors import Conflict, FieldErrors
from studio.models import Role


def _endpoint(request: HttpRequest, workspace: str, name: str, role: str = Role.READER) -> Any:
    ws, user_role = access.workspace_for(request.user, workspace, role)
    found = (
        Endpoint.objects.filter(workspace=ws, name=name)
        .exclude(state=State.DELETING)
        .select_related("compute__cluster")
        .first()
    )
    if found is None:
        raise Http404(f"No online endpoint named {name!r}.")
    return found, user_role


@login_required
def endpoint_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, role = access.workspace_for(request.user, workspace)
    can_create = access.can(role, Role.CONTRIBUTOR)
    form = EndpointForm(request.POST or None)
    errors: list[tuple[str, str]] = []
    if request.method == "POST":
        if not can_create:
            raise PermissionDenied("Only contributors create endpoints.")
        if form.is_valid():
            try:
                made = services.save_endpoint(ws, request.user, {**form.cleaned_data})
            except FieldErrors as exc:
                errors = exc.errors
            else:
                messages.success(request, f"Endpoint {made.name} created.")
                return redirect("endpoints:detail", ws.name, made.name)
    found = Endpoint.objects.filter(workspace=ws).exclude(state=State.DELETING)
    context = {
        "workspace": ws,
        "endpoints": [
            render_endpoint(e, request.build_absolute_uri("/"))
            for e in found.select_related("compute__cluster")
        ],
        "can_create": can_create,
        "form": form,
        "errors": errors,
    }
    return render(request, "endpoints/list.html", context, status=400 if errors else 200)


@login_required
def endpoint_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, role = _endpoint(request, workspace, name)
    deployments = list(endpoint.deployments.exclude(state=State.DELETING).select_related("model"))
    models = [
        f"azureml:{m.name}:{m.version}"
        for m in Model.objects.filter(workspace=endpoint.workspace).order_by("name", "-created_at")
    ]
    context = {
        "workspace": endpoint.workspace,
        "endpoint": render_endpoint(endpoint, request.build_absolute_uri("/")),
        "deployments": deployments,
        "busy": any(d.state in (State.CREATING, State.UPDATING) for d in deployments),
        "traffic": [(d.name, endpoint.traffic.get(d.name, 0)) for d in deployments],
        "can_change": access.can(role, Role.CONTRIBUTOR),
        "deployment_form": DeploymentForm(models=models),
        "console": ConsoleForm(),
        "has_models": bool(models),
    }
    if request.GET.get("part") == "deployments":
        context["endpoint"] = endpoint
        return render(request, "endpoints/_deployments.html", context)
    return render(request, "endpoints/detail.html", context)


@login_required
@require_POST
def deployment_new(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    models = [
        f"azureml:{m.name}:{m.version}" for m in Model.objects.filter(workspace=endpoint.workspace)
    ]
    form = DeploymentForm(request.POST, request.FILES, models=models)
    if not form.is_valid():
        for field, problems in form.errors.items():
            messages.error(request, f"{field}: {' '.join(str(p) for p in problems)}")
        return redirect("endpoints:detail", workspace, name)
    data: dict[str, Any] = {
        "name": form.cleaned_data["name"],
        "endpoint_name": endpoint.name,
        "model": form.cleaned_data["model"],
        "instance_count": form.cleaned_data["instance_count"],
    }
    script = form.cleaned_data["scoring_script"]
    files = form.cleaned_data["code"]
    try:
        if script:
            data["code_configuration"] = {"code": ".", "scoring_script": script}
            with folder_archive(files) as code:
                made = services.save_deployment(
                    endpoint.workspace,
                    request.user,
                    data,
                    code=code,
                    all_traffic=form.cleaned_data["all_traffic"],
                )
        else:
            made = services.save_deployment(
                endpoint.workspace,
                request.user,
                data,
                all_traffic=form.cleaned_data["all_traffic"],
            )
    except FieldErrors as exc:
        for field, message in exc.errors:
            messages.error(request, f"{field}: {message}")
    except Conflict as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deployment {made.name} is being created.")
    return redirect("endpoints:detail", workspace, name)


@login_required
@require_POST
def traffic(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    shares: dict[str, int] = {}
    for deployment in endpoint.deployments.values_list("name", flat=True):
        raw = request.POST.get(f"traffic-{deployment}", "0")
        shares[deployment] = int(raw) if raw.strip().isdigit() else -1
    try:
        services.set_traffic(endpoint, shares)
    except FieldErrors as exc:
        for field, message in exc.errors:
            messages.error(request, f"{field}: {message}")
    else:
        split = ", ".join(f"{k} {v}%" for k, v in shares.items())
        messages.success(request, f"Traffic: {split}.")
    return redirect("endpoints:detail", workspace, name)


@login_required
@require_POST
def keys(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    """The keys (or a token), shown on request to contributors only."""
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    if endpoint.auth_mode == "aml_token":
        shown = {"token": services.issue_token(endpoint)["accessToken"]}
    else:
        shown = services.keys_of(endpoint)
    return render(request, "endpoints/_keys.html", {"keys": shown})


@login_required
@require_POST
def console(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    """The test console: one request through the router, as a client's would go."""
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    form = ConsoleForm(request.POST)
    if not form.is_valid():
        return render(request, "endpoints/_answer.html", {"problem": "Write a request body."})
    answer = async_to_sync(router.ROUTER.handle_once)(
        endpoint.name,
        "",
        form.cleaned_data["deployment"],
        "application/json",
        form.cleaned_data["request"].encode(),
        trusted=True,
    )
    context = {
        "status": answer.status,
        "deployment": answer.deployment,
        "body": answer.body.decode("utf-8", errors="replace")[:20_000],
    }
    return render(request, "endpoints/_answer.html", context)


@login_required
def deployment_traffic(
    request: HttpRequest, workspace: str, name: str, deployment: str
) -> JsonResponse:
    """The deployment's charts' data: the router's counts of the last 15 minutes."""
    endpoint, _role = _endpoint(request, workspace, name)
    found = endpoint.deployments.filter(name=deployment).first()
    if found is None:
        raise Http404(f"No deployment named {deployment!r}.")
    return JsonResponse(counts.series(found))


@login_required
def deployment_detail(
    request: HttpRequest, workspace: str, name: str, deployment: str
) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name)
    found = endpoint.deployments.filter(name=deployment).select_related("model").first()
    if found is None:
        raise Http404(f"No deployment named {deployment!r}.")
    context = {
        "workspace": endpoint.workspace,
        "endpoint": endpoint,
        "deployment": found,
        "settings": found.document,
    }
    return render(request, "endpoints/deployment.html", context)
