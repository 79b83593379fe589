from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from studio import access


@login_required
def home(request: HttpRequest) -> HttpResponse:
    workspaces = list(access.visible_workspaces(request.user))
    if len(workspaces) == 1:
        return redirect("jobs:list", workspace=workspaces[0].name)
    return render(request, "studio/home.html", {"workspaces": workspaces})


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # Never a traceback: the details are in the server log.
    if _wants_json(request):
        return JsonResponse(
            {"detail": "Internal error; the details are in the server log."}, status=500
        )
    return render(request, "500.html", status=500)
