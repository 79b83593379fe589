"""Studio pages for a workspace's environments."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from environments import curated
from environments.models import Environment
from environments.spec import conda_plan
from studio import access, assets


@login_required
def environment_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    context = {
        "workspace": ws,
        "environments": assets.latest(Environment, ws),
        "stand_ins": curated.STAND_INS,
    }
    return render(request, "environments/list.html", context)


@login_required
def environment_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    versions = list(
        Environment.objects.filter(workspace=ws, name=name).select_related("created_by")
    )
    if not versions:
        raise Http404(f"No environment named {name!r}.")
    for version in versions:
        plan = conda_plan(version.conda_file) if version.conda_file else None
        version.packages = plan.requirements if plan else []  # type: ignore[attr-defined]
        version.python = plan.python if plan else None  # type: ignore[attr-defined]
    context = {"workspace": ws, "name": name, "versions": versions}
    return render(request, "environments/detail.html", context)
