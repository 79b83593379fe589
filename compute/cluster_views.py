"""IT-ops console for clusters: register one, see what it answers, install the extension,
curate its instance types, attach it to workspaces. Thin: compute.clusters does the work."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import messages
from django.forms import BaseForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from compute import clusters, instance_types
from compute.forms import (
    AdminActForm,
    AttachForm,
    ClusterForm,
    ExtensionForm,
    InstanceTypeForm,
    InstanceTypeYamlForm,
)
from compute.models import Cluster, InstanceType
from compute.views import it_ops_required
from studio.documents import DocumentError, load_bounded
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace

F = TypeVar("F", bound=BaseForm)


def _show_errors(form: BaseForm, errors: FieldErrors) -> None:
    for field, message in errors.errors:
        form.add_error(field if field in form.fields else None, f"{field}: {message}")


@it_ops_required
def cluster_new(request: HttpRequest) -> HttpResponse:
    form = ClusterForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            cluster = clusters.register(
                data["name"], data["kubeconfig"], data["context"],
                description=data["description"], studio_url=data["studio_url"],
            )  # fmt: skip
        except FieldErrors as errors:
            _show_errors(form, errors)
        else:
            messages.success(request, f"Cluster {cluster.name} registered.")
            return redirect("compute:cluster", cluster.name)
    status = 400 if request.method == "POST" else 200
    context = {"form": form, "title": "Register a cluster", "multipart": True}
    return render(request, "compute/form.html", context, status=status)


@it_ops_required
def cluster_detail(request: HttpRequest, name: str, **forms: Any) -> HttpResponse:
    cluster = get_object_or_404(Cluster, name=name)
    context = {
        "cluster": cluster,
        "status": clusters.status(cluster),
        "attachments": cluster.attachments.select_related("workspace"),
        "instance_types": cluster.instance_types.all(),
        "settings": cluster.settings,
        "extension_form": forms.get("extension_form") or ExtensionForm(),
        "instance_type_form": forms.get("instance_type_form") or InstanceTypeYamlForm(),
        "outcome": forms.get("outcome"),
    }
    return render(request, "compute/cluster.html", context, status=forms.get("status", 200))


@it_ops_required
@require_POST
def cluster_install(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(Cluster, name=name)
    form = ExtensionForm(request.POST)
    form.is_valid()
    pairs = [line.strip() for line in form.cleaned_data.get("settings", "").splitlines()]
    try:
        outcome = clusters.install(
            cluster,
            [p for p in pairs if p],
            form.cleaned_data.get("kubeconfig", ""),
            form.cleaned_data.get("context", ""),
        )
    except FieldErrors as errors:
        _show_errors(form, errors)
        return cluster_detail(request, name, extension_form=_unechoed(form), status=400)
    if outcome.problems:
        return cluster_detail(
            request, name, extension_form=_unechoed(form), outcome=outcome, status=409
        )
    messages.success(request, f"The extension is installed in {name}.")
    return cluster_detail(request, name, outcome=outcome)


def _unechoed(form: F) -> F:
    """The form as typed, but for the credentials: they are never shown back."""
    form.data = {k: v for k, v in form.data.items() if k != "kubeconfig"}
    return form


@it_ops_required
def cluster_manifests(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(Cluster, name=name)
    response = HttpResponse(clusters.manifests(cluster), content_type="application/yaml")
    response["Content-Disposition"] = f'attachment; filename="kstudio-{name}.yaml"'
    return response


@it_ops_required
@require_POST
def cluster_uninstall(request: HttpRequest, name: str) -> HttpResponse:
    form = AdminActForm(request.POST)
    form.is_valid()
    given = form.cleaned_data
    try:
        removed = clusters.uninstall(
            get_object_or_404(Cluster, name=name),
            given.get("kubeconfig", ""),
            given.get("context", ""),
        )
        deleted = sum(1 for r in removed if r["outcome"] == "deleted")
        messages.success(request, f"Removed {deleted} object(s); attached namespaces kept.")
    except FieldErrors as errors:
        messages.error(request, str(errors))
    return redirect("compute:cluster", name)


@it_ops_required
@require_POST
def cluster_delete(request: HttpRequest, name: str) -> HttpResponse:
    try:
        clusters.delete(get_object_or_404(Cluster, name=name))
    except Conflict as exc:
        messages.error(request, str(exc))
        return redirect("compute:cluster", name)
    messages.success(request, f"Cluster {name} deleted.")
    return redirect("compute:console")


@it_ops_required
@require_POST
def cluster_instance_types(request: HttpRequest, name: str) -> HttpResponse:
    """Create or replace instance types from pasted YAML, as `kubectl apply` would."""
    cluster = get_object_or_404(Cluster, name=name)
    form = InstanceTypeYamlForm(request.POST)
    if form.is_valid():
        try:
            document = load_bounded(form.cleaned_data["document"])
            saved = instance_types.save_all(cluster, instance_types.from_document(document))
        except DocumentError as exc:
            form.add_error("document", exc.errors[0][1])
        except FieldErrors as errors:
            _show_errors(form, errors)
        else:
            messages.success(request, f"Saved {', '.join(t.name for t in saved)} in {name}.")
            for type_name, said in instance_types.fit_warnings(cluster, saved).items():
                messages.warning(request, f"{type_name}: {said}")
            return redirect("compute:cluster", name)
    return cluster_detail(request, name, instance_type_form=form, status=400)


@it_ops_required
def cluster_instance_type_edit(
    request: HttpRequest, name: str, instance_type: str | None = None
) -> HttpResponse:
    """One of the cluster's instance types, field by field: saved in the cluster first
    (as an InstanceType object), then here; the fit check's warnings shown."""
    cluster = get_object_or_404(Cluster, name=name)
    row = (
        get_object_or_404(InstanceType, cluster=cluster, name=instance_type)
        if instance_type
        else None
    )
    form = InstanceTypeForm(request.POST or None, instance=row, cluster=cluster)
    if request.method == "POST" and form.is_valid():
        try:
            saved = instance_types.save(
                cluster, form.instance.name, form.instance.node_selector,
                form.instance.resources, form.cleaned_data.get("description") or "",
            )  # fmt: skip
        except FieldErrors as errors:
            _show_errors(form, errors)
        else:
            messages.success(request, f"Instance type {saved.name} saved in {name}.")
            for type_name, said in instance_types.fit_warnings(cluster, [saved]).items():
                messages.warning(request, f"{type_name}: {said}")
            return redirect("compute:cluster", name)
    context = {
        "form": form,
        "title": f"Instance type {instance_type} of {name}"
        if instance_type
        else f"New instance type in {name}",
        "cancel": reverse("compute:cluster", args=[name]),
    }
    return render(
        request, "compute/form.html", context, status=400 if request.method == "POST" else 200
    )


@it_ops_required
@require_POST
def cluster_instance_type_delete(
    request: HttpRequest, name: str, instance_type: str
) -> HttpResponse:
    try:
        instance_types.delete(get_object_or_404(Cluster, name=name), instance_type)
        messages.success(request, f"Instance type {instance_type} deleted from {name}.")
    except FieldErrors as errors:
        messages.error(request, str(errors))
    return redirect("compute:cluster", name)


@it_ops_required
def attach(request: HttpRequest, workspace: str) -> HttpResponse:
    ws = get_object_or_404(Workspace, name=workspace)
    form = AttachForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            compute = clusters.attach(
                ws, data["name"], Cluster.objects.filter(name=data["cluster"]).first(),
                data["namespace"], create_namespace=data["create_namespace"],
                description=data["description"], image_pull_secret=data["image_pull_secret"],
                kubeconfig=data["kubeconfig"], context=data["context"],
            )  # fmt: skip
        except FieldErrors as errors:
            _show_errors(form, errors)
        else:
            messages.success(
                request, f"{compute.name} attached to {ws.name} ({compute.namespace})."
            )
            return redirect("compute:console")
    status = 400 if request.method == "POST" else 200
    if request.method == "POST":
        form = _unechoed(form)
    title = f"Attach a cluster to {ws.name}"
    return render(request, "compute/form.html", {"form": form, "title": title}, status=status)


@it_ops_required
def cluster_nodes(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(Cluster, name=name)
    try:
        report = clusters.nodes_report(cluster)
    except FieldErrors as errors:
        messages.error(request, str(errors))
        return redirect("compute:cluster", name)
    return render(request, "compute/nodes.html", {"cluster": cluster, **report})
