"""IT-ops console: compute targets per workspace, and instance types."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from compute import services
from compute.forms import ComputeTargetForm, InstanceTypeForm
from compute.models import Cluster, ComputeTarget, InstanceType
from jobs.services import Load, load_by_placement
from studio import access
from studio.models import Workspace

View = Callable[..., HttpResponse]


def it_ops_required(view: View) -> View:
    @wraps(view)
    @login_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not access.is_it_ops(request.user):
            raise PermissionDenied("The console is for IT-ops.")
        return view(request, *args, **kwargs)

    return wrapped


@it_ops_required
def console(request: HttpRequest) -> HttpResponse:
    workspaces = Workspace.objects.prefetch_related("computes__cluster")
    by_compute, by_instance_type = load_by_placement()
    instance_types = list(InstanceType.objects.filter(cluster=None))
    for instance_type in instance_types:
        instance_type.load = by_instance_type.get(instance_type.name, Load())  # type: ignore[attr-defined]
    for workspace in workspaces:
        for compute in workspace.computes.all():
            compute.load = by_compute.get(compute.pk, Load())  # type: ignore[attr-defined]
    context = {
        "workspaces": workspaces,
        "instance_types": instance_types,
        "clusters": Cluster.objects.prefetch_related("attachments"),
    }
    return render(request, "compute/console.html", context)


@it_ops_required
def instance_type_edit(request: HttpRequest, name: str | None = None) -> HttpResponse:
    instance = get_object_or_404(InstanceType, cluster=None, name=name) if name else None
    form = InstanceTypeForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        messages.success(request, f"Instance type {saved.name} saved.")
        return redirect("compute:console")
    return _form_page(request, form, f"Instance type {name}" if name else "New instance type")


@it_ops_required
@require_POST
def instance_type_delete(request: HttpRequest, name: str) -> HttpResponse:
    instance = get_object_or_404(InstanceType, cluster=None, name=name)
    try:
        services.delete_instance_type(instance)
        messages.success(request, f"Instance type {name} deleted.")
    except services.ComputeInUse as exc:
        messages.error(request, str(exc))
    return redirect("compute:console")


@it_ops_required
def compute_edit(request: HttpRequest, workspace: str, name: str | None = None) -> HttpResponse:
    ws = get_object_or_404(Workspace, name=workspace)
    instance = get_object_or_404(ComputeTarget, workspace=ws, name=name) if name else None
    form = ComputeTargetForm(request.POST or None, instance=instance, workspace=ws)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        services.became_available(saved)
        messages.success(request, f"Compute target {saved.name} saved in {ws.name}.")
        return redirect("compute:console")
    title = f"Compute target {name} in {ws.name}" if name else f"New compute target in {ws.name}"
    return _form_page(request, form, title)


def _form_page(request: HttpRequest, form: Any, title: str) -> HttpResponse:
    """The edit form; a POST that lands here had errors, so it answers 400."""
    status = 400 if request.method == "POST" else 200
    return render(request, "compute/form.html", {"form": form, "title": title}, status=status)


@it_ops_required
@require_POST
def compute_delete(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    compute = get_object_or_404(ComputeTarget, workspace__name=workspace, name=name)
    try:
        services.delete_compute(compute)
        messages.success(request, f"Compute target {name} deleted from {workspace}.")
    except services.ComputeInUse as exc:
        messages.error(request, str(exc))
    return redirect("compute:console")
