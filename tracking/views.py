"""Studio pages for a workspace's experiments: each experiment's runs (jobs' and those
logged from outside) with the latest value of chosen metrics as columns."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, F, FloatField, QuerySet
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from studio import access
from tracking.models import Experiment, Lifecycle, Run
from tracking.services import latest_value

PAGE_SIZE = 50
MAX_COLUMNS = 8


@login_required
def experiment_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    experiments = (
        Experiment.objects.filter(workspace=ws, lifecycle_stage=Lifecycle.ACTIVE)
        .annotate(run_count=Count("runs"))
        .order_by("name")
    )
    tracking_uri = request.build_absolute_uri(f"/workspaces/{ws.name}/mlflow")
    context = {"workspace": ws, "experiments": experiments, "tracking_uri": tracking_uri}
    return render(request, "tracking/experiments.html", context)


def _metric_columns(request: HttpRequest, runs: QuerySet[Run]) -> list[str]:
    """The metrics shown as columns: those asked for (?metrics=a,b), else those the
    newest runs logged."""
    asked = [m for m in request.GET.get("metrics", "").split(",") if m.strip()]
    if asked:
        return asked[:MAX_COLUMNS]
    keys: list[str] = []
    for latest in runs.order_by("-start_time", "-id").values_list("latest_metrics", flat=True)[:20]:
        keys += [k for k in latest if k not in keys and not k.startswith("system/")]
    return sorted(keys)[:MAX_COLUMNS]


@login_required
def experiment_detail(request: HttpRequest, workspace: str, experiment_id: int) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace)
    experiment = Experiment.objects.filter(workspace=ws, pk=experiment_id).first()
    if experiment is None:
        raise Http404("No such experiment.")
    runs = Run.objects.filter(experiment=experiment, lifecycle_stage=Lifecycle.ACTIVE)
    columns = _metric_columns(request, runs)
    ordering = request.GET.get("ordering", "-start_time")
    key = ordering.lstrip("-")
    if key.startswith("metrics."):
        metric = key.removeprefix("metrics.")
        value = Cast(KeyTransform("value", KeyTransform(metric, "latest_metrics")), FloatField())
        runs = runs.annotate(_sort=value)
        expression = F("_sort").desc(nulls_last=True) if ordering.startswith("-") else F(
            "_sort"
        ).asc(nulls_last=True)  # fmt: skip
        runs = runs.order_by(expression, "-id")
    elif key in ("start_time", "name", "status"):
        runs = runs.order_by(ordering, "-id")
    else:
        runs = runs.order_by("-start_time", "-id")
    page = Paginator(runs, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [_row(run, columns) for run in page.object_list]
    context: dict[str, Any] = {
        "workspace": ws,
        "experiment": experiment,
        "columns": columns,
        "rows": rows,
        "page": page,
        "ordering": ordering,
    }
    return render(request, "tracking/experiment.html", context)


def _row(run: Run, columns: list[str]) -> dict[str, Any]:
    latest = run.latest_metrics
    duration = (run.end_time - run.start_time) / 1000 if run.end_time and run.start_time else None
    return {
        "run": run,
        "job": run.tags.get("kstudio.job", ""),
        "values": [latest_value(latest[c]) if c in latest else None for c in columns],
        "duration": duration,
    }
