"""Studio pages for batch endpoints: the list, and an endpoint with its deployments, a
form to invoke it and the jobs it started with their progress."""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from compute.models import ComputeTarget
from data.forms import folder_archive
from endpoints import batch
from endpoints.forms import BatchDeploymentForm, BatchEndpointForm, InvokeForm
from endpoints.models import BatchEndpoint
from jobs.models import TERMINAL
from jobs.services import Upload
from registry.models import Model
from studio import access
from studio.errors import Conflict, FieldErrors
from studio.models import Role


def _endpoint(request: HttpRequest, workspace: str, name: str, role: str = Role.READER) -> Any:
    ws, user_role = access.workspace_for(request.user, workspace, role)
    found = BatchEndpoint.objects.filter(workspace=ws, name=name).first()
    if found is None:
        raise Http404(f"No batch endpoint named {name!r}.")
    return found, user_role


def _say(request: HttpRequest, errors: list[tuple[str, str]]) -> None:
    for field, message in errors:
        messages.error(request, f"{field}: {message}")


@login_required
def batch_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, role = access.workspace_for(request.user, workspace)
    can_create = access.can(role, Role.CONTRIBUTOR)
    form = BatchEndpointForm(request.POST or None)
    errors: list[tuple[str, str]] = []
    if request.method == "POST":
        if not can_create:
            raise PermissionDenied("Only contributors create endpoints.")
        if form.is_valid():
            try:
                made = batch.save_endpoint(ws, request.user, {**form.cleaned_data}, create=True)
            except FieldErrors as exc:
                errors = exc.errors
            else:
                messages.success(request, f"Batch endpoint {made.name} created.")
                return redirect("batch:detail", ws.name, made.name)
    context = {
        "workspace": ws,
        "endpoints": BatchEndpoint.objects.filter(workspace=ws).prefetch_related("deployments"),
        "can_create": can_create,
        "form": form,
        "errors": errors,
    }
    return render(request, "endpoints/batch_list.html", context, status=400 if errors else 200)


def _forms(endpoint: BatchEndpoint, data: Any = None, files: Any = None) -> dict[str, Any]:
    models = [
        f"azureml:{m.name}:{m.version}"
        for m in Model.objects.filter(workspace=endpoint.workspace).order_by("name", "-created_at")
    ]
    computes = list(
        ComputeTarget.objects.filter(workspace=endpoint.workspace).values_list("name", flat=True)
    )
    deployments = [d.name for d in endpoint.deployments.all()]
    return {
        "deployment_form": BatchDeploymentForm(models=models, computes=computes),
        "invoke_form": InvokeForm(deployments=deployments),
        "has_models": bool(models),
    }


@login_required
def batch_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, role = _endpoint(request, workspace, name)
    jobs = [(job, batch.progress(job)) for job in batch.jobs_of(endpoint)[:50]]
    context = {
        "workspace": endpoint.workspace,
        "endpoint": endpoint,
        "deployments": endpoint.deployments.select_related("model", "compute"),
        "jobs": jobs,
        "busy": any(job.status not in TERMINAL for job, _ in jobs),
        "can_change": access.can(role, Role.CONTRIBUTOR),
        **_forms(endpoint),
    }
    if request.GET.get("part") == "jobs":
        return render(request, "endpoints/_batch_jobs.html", context)
    return render(request, "endpoints/batch_detail.html", context)


@login_required
@require_POST
def batch_deployment_new(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    form = _forms(endpoint)["deployment_form"]
    form = BatchDeploymentForm(
        request.POST,
        request.FILES,
        models=[c for c, _ in form.fields["model"].choices],
        computes=[c for c, _ in form.fields["compute"].choices],
    )
    if not form.is_valid():
        _say(request, [(f, " ".join(str(p) for p in ps)) for f, ps in form.errors.items()])
        return redirect("batch:detail", workspace, name)
    got = form.cleaned_data
    data: dict[str, Any] = {
        "name": got["name"],
        "endpoint_name": endpoint.name,
        "type": "model",
        "model": got["model"],
        "compute": got["compute"],
        "settings": {
            key: got[key]
            for key in (
                "mini_batch_size",
                "max_concurrency_per_instance",
                "error_threshold",
                "output_file_name",
            )
        },
    }
    try:
        with contextlib.ExitStack() as stack:
            code = None
            if got["scoring_script"]:
                data["code_configuration"] = {"code": ".", "scoring_script": got["scoring_script"]}
                code = stack.enter_context(folder_archive(got["code"]))
            made = batch.save_deployment(
                endpoint.workspace, request.user, data, code=code, set_default=got["set_default"]
            )
    except FieldErrors as exc:
        _say(request, exc.errors)
    else:
        messages.success(request, f"Deployment {made.name} saved.")
    return redirect("batch:detail", workspace, name)


@login_required
@require_POST
def batch_default(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    chosen = request.POST.get("deployment", "")
    try:
        batch.save_endpoint(
            endpoint.workspace,
            request.user,
            {"name": endpoint.name, "description": endpoint.description, "tags": endpoint.tags,
             "properties": endpoint.properties, "defaults": {"deployment_name": chosen}},
            create=False,
        )  # fmt: skip
    except FieldErrors as exc:
        _say(request, exc.errors)
    else:
        messages.success(request, f"{chosen} is now the default deployment.")
    return redirect("batch:detail", workspace, name)


@login_required
@require_POST
def batch_deployment_delete(
    request: HttpRequest, workspace: str, name: str, deployment: str
) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    found = endpoint.deployments.filter(name=deployment).first()
    if found is None:
        raise Http404(f"No deployment named {deployment!r}.")
    try:
        batch.delete_deployment(found)
    except Conflict as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deployment {deployment} deleted.")
    return redirect("batch:detail", workspace, name)


@login_required
@require_POST
def batch_invoke(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint, _role = _endpoint(request, workspace, name, Role.CONTRIBUTOR)
    form = InvokeForm(
        request.POST, request.FILES, deployments=[d.name for d in endpoint.deployments.all()]
    )
    if not form.is_valid():
        _say(request, [(f, " ".join(str(p) for p in ps)) for f, ps in form.errors.items()])
        return redirect("batch:detail", workspace, name)
    got = form.cleaned_data
    options = {
        "deployment_name": got["deployment"] or None,
        "mini_batch_size": got["mini_batch_size"],
    }
    try:
        if got["upload"]:
            with folder_archive(got["upload"]) as archive:
                job = batch.invoke(
                    endpoint, request.user, input_upload=Upload(archive, "input.tar"), **options
                )
        else:
            job = batch.invoke(endpoint, request.user, input=got["input"] or None, **options)
    except FieldErrors as exc:
        _say(request, exc.errors)
    else:
        messages.success(request, f"Job {job.name} started.")
    return redirect("batch:detail", workspace, name)
