"""MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`): a run's files, kept
in the studio's artifact store, as the stock client's `mlflow-artifacts:` repository
uploads, lists and downloads them. A run's artifact URI is
`mlflow-artifacts:/<experiment>/<run>/artifacts`."""

from __future__ import annotations

import tempfile
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from studio.models import Role, Workspace
from tracking.models import Run
from tracking.rest import error, who

CHUNK = 1024 * 1024


def store() -> Storage:
    return storages["artifacts"]


def _run_and_name(ws: Workspace, path: str) -> tuple[Run, str] | JsonResponse:
    """`<experiment>/<run>/artifacts/<file>`: the run (of this workspace) and the file's
    name in the store; nothing outside a run's own artifacts can be named."""
    parts = PurePosixPath(path.strip("/")).parts
    if len(parts) < 3 or parts[2] != "artifacts" or any(p in ("..", ".") for p in parts):
        return error("INVALID_PARAMETER_VALUE", f"Not a run's artifact path: {path!r}")
    run = Run.objects.filter(
        run_id=parts[1], experiment_id=parts[0] if parts[0].isdigit() else -1,
        experiment__workspace=ws,
    ).first()  # fmt: skip
    if run is None:
        return error("RESOURCE_DOES_NOT_EXIST", f"No run {parts[1]} in experiment {parts[0]}")
    return run, "/".join(("mlflow", str(ws.pk), *parts))


@csrf_exempt  # token authentication only
def listing(request: HttpRequest, workspace: str) -> JsonResponse:
    if request.method != "GET":
        return error("BAD_REQUEST", "Listing takes GET")
    caller = who(request, workspace, Role.READER, may_write_run=False)
    if isinstance(caller, JsonResponse):
        return caller
    found = _run_and_name(caller[0], request.GET.get("path", ""))
    if isinstance(found, JsonResponse):
        return found
    _run, name = found
    try:
        folders, files = store().listdir(name)
    except FileNotFoundError:
        folders, files = [], []
    if not folders and not files and store().exists(name):  # the path is one file
        entry = PurePosixPath(name).name
        return JsonResponse(
            {"files": [{"path": entry, "is_dir": False, "file_size": store().size(name)}]}
        )
    entries: list[dict[str, Any]] = [{"path": f, "is_dir": True} for f in sorted(folders)]
    entries += [
        {"path": f, "is_dir": False, "file_size": store().size(f"{name}/{f}")}
        for f in sorted(files)
    ]
    return JsonResponse({"files": entries})


@csrf_exempt  # token authentication only
def artifact(request: HttpRequest, workspace: str, path: str) -> HttpResponseBase:
    writing = request.method in ("PUT", "DELETE")
    if request.method not in ("GET", "PUT", "DELETE"):
        return error("BAD_REQUEST", "Artifacts take GET, PUT or DELETE")
    role = Role.CONTRIBUTOR if writing else Role.READER
    caller = who(request, workspace, role, may_write_run=writing)
    if isinstance(caller, JsonResponse):
        return caller
    ws, _user, only_run = caller
    found = _run_and_name(ws, path)
    if isinstance(found, JsonResponse):
        return found
    run, name = found
    if writing and only_run and run.run_id != only_run:
        return error("PERMISSION_DENIED", "A job's token writes only the job's own run.")
    if request.method == "GET":
        if not store().exists(name):
            return error("RESOURCE_DOES_NOT_EXIST", f"No artifact {path!r}")
        return FileResponse(store().open(name, "rb"), as_attachment=True)
    if request.method == "DELETE":
        if store().exists(name):
            store().delete(name)
        return JsonResponse({})
    # PUT: the body, spooled (small in memory, big on disk) and capped.
    limit = settings.STUDIO_MAX_UPLOAD_BYTES
    with tempfile.SpooledTemporaryFile(max_size=CHUNK) as body:
        size = 0
        while chunk := request.read(CHUNK):
            size += len(chunk)
            if size > limit:
                return error("INVALID_PARAMETER_VALUE",
                             f"The artifact is larger than this studio accepts ({limit:,} "
                             "bytes; STUDIO_MAX_UPLOAD_BYTES)")  # fmt: skip
            body.write(chunk)
        body.seek(0)
        if store().exists(name):
            store().delete(name)
        store().save(name, File(body))
    return JsonResponse({})
