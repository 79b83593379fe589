"""Studio pages for a workspace's data assets and datastores."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from data import services
from data.forms import DataAssetForm, DatastoreForm, folder_archive
from data.models import DataAsset, Datastore
from studio import access, assets
from studio.documents import load_yaml
from studio.errors import Conflict, FieldErrors
from studio.models import Role


@login_required
def data_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, role = access.workspace_for(request.user, workspace)
    context = {
        "workspace": ws,
        "assets": assets.latest(DataAsset, ws),
        "datastores": Datastore.objects.filter(workspace=ws),
        "can_create": access.can(role, Role.CONTRIBUTOR),
    }
    return render(request, "data/list.html", context)


@login_required
def data_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    versions = list(
        DataAsset.objects.filter(workspace=ws, name=name)
        .select_related("created_by")
        .prefetch_related("uses__job")
    )
    if not versions:
        raise Http404(f"No data asset named {name!r}.")
    for version in versions:  # lineage, split by direction for the page
        uses = list(version.uses.all())
        version.made_by = [u for u in uses if u.direction == "output"]  # type: ignore[attr-defined]
        version.read_by = [u for u in uses if u.direction == "input"]  # type: ignore[attr-defined]
    context = {"workspace": ws, "name": name, "versions": versions}
    return render(request, "data/detail.html", context)


@login_required
def data_new(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace, Role.CONTRIBUTOR)
    form = DataAssetForm(request.POST or None, request.FILES or None)
    errors: list[tuple[str, str]] = []
    if request.method == "POST" and form.is_valid():
        asset, errors = assets.register_from_form(
            form, lambda data, files: _create(ws, request, data, files)
        )
        if asset is not None:
            messages.success(request, f"Registered {asset.name}:{asset.version}.")
            return redirect("data:detail", workspace=ws.name, name=asset.name)
    status = 400 if request.method == "POST" else 200
    context = {"workspace": ws, "form": form, "errors": errors}
    return render(request, "data/new.html", context, status=status)


def _create(ws: Any, request: HttpRequest, data: dict[str, Any], files: list[Any]) -> DataAsset:
    if not files:
        return services.create_asset(ws, request.user, data)
    if data["type"] == "uri_file":
        data["path"] = files[0].name
        return services.create_asset(ws, request.user, data, files[0], files[0].name)
    data["path"] = data["name"]
    with folder_archive(files) as archive:
        return services.create_asset(ws, request.user, data, archive, "upload.tar")


@login_required
def datastores(request: HttpRequest, workspace: str) -> HttpResponse:
    """The workspace's datastores; its owners and IT-ops add and change them."""
    ws, can_manage = access.members_of(request.user, workspace)
    form = DatastoreForm(request.POST or None)
    errors: list[tuple[str, str]] = []
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied("Only the workspace's owners and IT-ops manage datastores.")
        if form.is_valid():
            try:
                saved = services.save_datastore(
                    ws, request.user, load_yaml(form.cleaned_data["document"], "datastore")
                )
            except FieldErrors as exc:
                errors = exc.errors
            except PermissionDenied as exc:
                errors = [("type", str(exc))]
            else:
                messages.success(request, f"Datastore {saved.name} saved.")
                return redirect("data:datastores", workspace=ws.name)
    context = {
        "workspace": ws,
        "can_manage": can_manage,
        "datastores": Datastore.objects.filter(workspace=ws),
        "form": form,
        "errors": errors,
    }
    status = 400 if request.method == "POST" else 200
    return render(request, "data/datastores.html", context, status=status)


@login_required
@require_POST
def datastore_delete(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    ws, can_manage = access.members_of(request.user, workspace)
    if not can_manage:
        raise PermissionDenied("Only the workspace's owners and IT-ops manage datastores.")
    datastore = Datastore.objects.filter(workspace=ws, name=name).first()
    if datastore is None:
        raise Http404(f"No datastore named {name!r}.")
    try:
        services.delete_datastore(datastore)
    except Conflict as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Datastore {name} deleted.")
    return redirect("data:datastores", workspace=ws.name)
