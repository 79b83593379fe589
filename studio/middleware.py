"""Request bounds applied before any view (or parser) reads a byte of the body."""

from collections.abc import Callable

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
        # Files (a multipart submission, an output a job publishes) may be big; documents not.
        upload = request.content_type in ("multipart/form-data", "application/octet-stream") or (
            # An MLflow artifact comes with its own file's type (text/csv, image/png...).
            request.method == "PUT" and "/mlflow-artifacts/" in request.path
        )
        limit = settings.STUDIO_MAX_UPLOAD_BYTES if upload else settings.STUDIO_MAX_REQUEST_BYTES
        if length > limit:
            return too_large(request, limit, "upload" if upload else "request body")
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, RequestDataTooBig):
            return too_large(request, settings.STUDIO_MAX_REQUEST_BYTES, "request body")
        return None
