"""MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`): files as the stock
client's `mlflow-artifacts:` repository uploads, lists and downloads them. A path names
one tree of files (tracking.files):

- `<experiment>/<run>/artifacts/...`: a run's artifacts (`run_info`'s artifact URI);
- `<experiment>/models/<model_id>/artifacts/...`: an MLflow 3 logged model's;
- `<root>/...` for each root in STUDIO_ARTIFACT_ROOTS: trees other apps serve (the model
  registry's versions, read-only), so the client's `models:/name/1` downloads work."""

from __future__ import annotations

import tempfile

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from studio.models import Role
from tracking.errors import TrackingError, invalid
from tracking.files import CHUNK, resolve
from tracking.rest import error, who


@csrf_exempt  # token authentication only
def listing(request: HttpRequest, workspace: str) -> JsonResponse:
    if request.method != "GET":
        return error("BAD_REQUEST", "Listing takes GET")
    caller = who(request, workspace, Role.READER, may_write_run=False)
    if isinstance(caller, JsonResponse):
        return caller
    try:
        tree, path = resolve(caller[0], request.GET.get("path", ""))
        return JsonResponse({"files": tree.listing(path)})
    except TrackingError as exc:
        return error(exc.code, exc.message)


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
    try:
        tree, inner = resolve(ws, path)
        if writing and not tree.writable_by(only_run):
            return error("PERMISSION_DENIED", "A job's token writes only the job's own run.")
        if request.method == "GET":
            return FileResponse(tree.open(inner), as_attachment=True)
        if request.method == "DELETE":
            tree.delete(inner)
            return JsonResponse({})
        if not inner:
            raise invalid("Name a file to upload.")
        # PUT: the body, spooled (small in memory, big on disk) and capped.
        limit = settings.STUDIO_MAX_UPLOAD_BYTES
        with tempfile.SpooledTemporaryFile(max_size=CHUNK) as body:
            size = 0
            while chunk := request.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise invalid(f"The artifact is larger than this studio accepts ({limit:,} "
                                  "bytes; STUDIO_MAX_UPLOAD_BYTES)")  # fmt: skip
                body.write(chunk)
            if size < int(request.META.get("CONTENT_LENGTH") or 0):
                raise invalid("The upload ended before its Content-Length: nothing was stored")
            body.seek(0)
            tree.save(inner, body)
        return JsonResponse({})
    except TrackingError as exc:
        return error(exc.code, exc.message)
