"""Studio pages for a workspace's models: the list, a model's versions, one version with
its files and lineage, and registering one."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render

from data.forms import folder_archive
from data.stores import StoreError
from registry import services
from registry.forms import ModelForm
from registry.models import Model
from studio import access, assets
from studio.models import Role


@login_required
def model_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, role = access.workspace_for(request.user, workspace)
    context = {
        "workspace": ws,
        "models": assets.latest(Model, ws).select_related("job"),
        "can_create": access.can(role, Role.CONTRIBUTOR),
    }
    return render(request, "registry/list.html", context)


@login_required
def model_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    versions = list(
        Model.objects.filter(workspace=ws, name=name).select_related("created_by", "job")
    )
    if not versions:
        raise Http404(f"No model named {name!r}.")
    context = {"workspace": ws, "name": name, "versions": versions,
               "registered": versions[0].registered}  # fmt: skip
    return render(request, "registry/detail.html", context)


def _version(ws: Any, name: str, version: str) -> Model:
    try:
        found = assets.find(Model, ws, name, None if version == "latest" else version)
    except ValueError as exc:
        raise Http404(str(exc)) from exc
    assert isinstance(found, Model)
    return found


@login_required
def version_detail(request: HttpRequest, workspace: str, name: str, version: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    model = _version(ws, name, version)
    try:
        files, problem = services.files(model), ""
    except StoreError as exc:
        files, problem = [], f"The files cannot be read now: {exc}"
    context = {"workspace": ws, "model": model, "files": files, "problem": problem}
    return render(request, "registry/version.html", context)


@login_required
def version_download(
    request: HttpRequest, workspace: str, name: str, version: str
) -> HttpResponseBase:
    ws, _role = access.workspace_for(request.user, workspace)
    return download(_version(ws, name, version), request.GET.get("path"))


@login_required
def model_new(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace, Role.CONTRIBUTOR)
    initial = {key: request.GET[key] for key in ("name", "path", "type") if key in request.GET}
    form = ModelForm(request.POST or None, request.FILES or None, initial=initial)
    errors: list[tuple[str, str]] = []
    if request.method == "POST" and form.is_valid():
        model, errors = assets.register_from_form(
            form, lambda data, files: _create(ws, request, data, files)
        )
        if model is not None:
            messages.success(request, f"Registered {model.name}:{model.version}.")
            return redirect("registry:version", ws.name, model.name, model.version)
    status = 400 if request.method == "POST" else 200
    context = {"workspace": ws, "form": form, "errors": errors}
    return render(request, "registry/new.html", context, status=status)


def _create(ws: Any, request: HttpRequest, data: dict[str, Any], files: list[Any]) -> Model:
    if not files:
        return services.create_model(ws, request.user, data)
    if len(files) == 1:
        data["path"] = files[0].name
        return services.create_model(ws, request.user, data, files[0])
    data["path"] = data["name"]
    with folder_archive(files) as archive:
        return services.create_model(ws, request.user, data, archive, upload_is_folder=True)


def download(model: Model, path: str | None) -> HttpResponseBase:
    """A version's files as a streamed zip, or one of them; shared with the pages."""
    if path:
        try:
            f = services.open_file(model, path)
        except LookupError as exc:
            raise Http404(str(exc)) from exc
        return FileResponse(f, as_attachment=True, filename=PurePosixPath(path).name)
    response = StreamingHttpResponse(services.zip_stream(model), content_type="application/zip")
    filename = f"{model.name}-{model.version}.zip"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
