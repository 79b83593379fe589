"""Request bounds applied before any view (or parser) reads a byte of the body, and
chunked bodies (no Content-Length) read whole for Django."""

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse


def too_large_message(limit: int, what: str = "upload") -> str:
    return (
        f"The {what} is larger than this studio accepts ({limit:,} bytes); "
        "IT-ops can raise the limit"
        + (" (STUDIO_MAX_UPLOAD_BYTES)." if what == "upload" else " (STUDIO_MAX_REQUEST_BYTES).")
    )


def too_large_error(limit: int, what: str = "upload") -> dict[str, object]:
    return {"errors": [{"field": "(request)", "message": too_large_message(limit, what)}]}


def too_large(request: HttpRequest, limit: int, what: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(too_large_error(limit, what), status=413)
    message = too_large_message(limit, what)
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")


def body_limit(method: str, path: str, content_type: str) -> tuple[int, str]:
    """The most a body may be on this route, and what to call it: a multipart submission
    (code and data files) or a raw file (application/octet-stream, an MLflow artifact of
    any type) may be STUDIO_MAX_UPLOAD_BYTES, anything else STUDIO_MAX_REQUEST_BYTES."""
    upload = content_type in ("multipart/form-data", "application/octet-stream") or (
        method == "PUT" and "/mlflow-artifacts/" in path
    )
    if upload:
        return settings.STUDIO_MAX_UPLOAD_BYTES, "upload"
    return settings.STUDIO_MAX_REQUEST_BYTES, "request body"


class BodyLimitMiddleware:
    """413 for a body over the limit, by its Content-Length: a multipart submission (code
    and data files) or a raw file (application/octet-stream) may be
    STUDIO_MAX_UPLOAD_BYTES, anything else STUDIO_MAX_REQUEST_BYTES.
    Django itself stops reading a body past DATA_UPLOAD_MAX_MEMORY_SIZE when there is no
    Content-Length; that is answered with 413 too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit, what = body_limit(request.method or "", request.path, request.content_type or "")
        if length > limit:
            return too_large(request, limit, what)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, RequestDataTooBig):
            return too_large(request, settings.STUDIO_MAX_REQUEST_BYTES, "request body")
        return None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
CHUNK = 1024 * 1024


def chunked_bodies(app: WSGIApp) -> WSGIApp:
    """Django's WSGI request reads CONTENT_LENGTH bytes of a body and no more, so a body
    sent chunked (requests' `data=<generator>`, `curl -T -`) read as empty: an MLflow
    artifact PUT stored 0 bytes over the file. Such a body is read to its end here (the
    server de-chunks it) into a spooled file, within its route's limit, and handed on with
    its length; past the limit it is a 413, as BodyLimitMiddleware answers."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked or environ.get("CONTENT_LENGTH"):
            return app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        limit, what = body_limit(environ.get("REQUEST_METHOD", ""), path, content_type)
        body = tempfile.SpooledTemporaryFile(max_size=CHUNK)  # noqa: SIM115 - handed on
        size = 0
        while chunk := environ["wsgi.input"].read(CHUNK):
            size += len(chunk)
            if size > limit:
                body.close()
                return _too_large_wsgi(start_response, path, limit, what)
            body.write(chunk)
        body.seek(0)
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = body, str(size)
        return app(environ, start_response)

    return wrapped


def _too_large_wsgi(
    start_response: Callable[..., Any], path: str, limit: int, what: str
) -> Iterable[bytes]:
    import json

    if path.startswith("/api/"):
        content, kind = json.dumps(too_large_error(limit, what)).encode(), "application/json"
    else:
        content, kind = too_large_message(limit, what).encode(), "text/plain; charset=utf-8"
    start_response("413 Request Entity Too Large",
                   [("Content-Type", kind), ("Content-Length", str(len(content)))])  # fmt: skip
    return [content]
