"""Studio pages for jobs: one view answers the full page or its htmx partial."""

from collections.abc import Iterable
from pathlib import PurePosixPath

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs import outputs, services
from jobs.filters import JobFilter
from jobs.forms import SubmitJobForm
from jobs.models import Job, Status
from jobs.spec import SpecError
from studio import access
from studio.documents import load_yaml
from studio.htmx import is_htmx_partial
from studio.models import Role
from tracking import services as tracking
from tracking.models import Run

PAGE_SIZE = 25


@login_required
def job_list(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, role = access.workspace_for(request.user, workspace)
    jobs = (
        Job.objects.filter(workspace=ws)
        .select_related("created_by")
        .only(
            "name",
            "display_name",
            "experiment_name",
            "status",
            "compute_name",
            "instance_type",
            "created_at",
            "started_at",
            "ended_at",
            "created_by__username",
            "workspace_id",
            "run_id",
        )
    )
    filters = JobFilter(request.GET, queryset=jobs)
    page = Paginator(filters.qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    metric = request.GET.get("metric", "").strip()[:250]
    if metric:
        _with_metric(page.object_list, metric)
    columns = _columns(query, request.GET.get("ordering", "-created"))
    if metric:
        columns.append({"label": metric, "query": "", "sort": "none"})
    context = {
        "workspace": ws,
        "role": role,
        "can_submit": access.can(role, Role.CONTRIBUTOR),
        "page": page,
        "statuses": Status.values,
        "filters": filters.form,
        "query": query.urlencode(),
        "columns": columns,
        "metric": metric,
        "metric_keys": [] if is_htmx_partial(request) else tracking.metric_keys(ws),
    }
    template = "jobs/_table.html" if is_htmx_partial(request) else "jobs/list.html"
    return render(request, template, context)


COLUMNS = (
    (None, "Compare"),
    ("name", "Name"),
    ("status", "Status"),
    ("experiment", "Experiment"),
    ("compute", "Compute"),
    ("instance_type", "Instance type"),
    ("created", "Created"),
    (None, "Duration"),
    (None, "By"),
)


def _columns(query: QueryDict, ordering: str) -> list[dict[str, str]]:
    """Each column's heading, and for sortable ones the query that sorts by it (a second
    click reverses) and its aria-sort state."""
    columns = []
    for key, label in COLUMNS:
        column = {"label": label, "query": "", "sort": "none"}
        if key is not None:
            toggled = query.copy()
            toggled["ordering"] = f"-{key}" if ordering == key else key
            column["query"] = toggled.urlencode()
            if ordering == key:
                column["sort"] = "ascending"
            elif ordering == f"-{key}":
                column["sort"] = "descending"
        columns.append(column)
    return columns


def _job(
    request: HttpRequest, workspace: str, name: str, needed: str = Role.READER
) -> tuple[Job, str]:
    """The job and the user's role in its workspace (404 for non-members)."""
    ws, role = access.workspace_for(request.user, workspace, needed)
    job = get_object_or_404(Job.objects.select_related("created_by"), workspace=ws, name=name)
    job.workspace = ws
    return job, role


def _with_metric(jobs: Iterable[Job], metric: str) -> None:
    """Each job's latest value of `metric` (None: not logged), from its MLflow run: one
    query for the page."""
    by_run = {job.run_id: job for job in jobs}
    for job in by_run.values():
        job.metric_value = None  # type: ignore[attr-defined]
    found = Run.objects.filter(run_id__in=by_run).values_list("run_id", "latest_metrics")
    for run_id, latest in found:
        point = latest.get(metric)
        if point is not None:
            by_run[run_id].metric_value = tracking.latest_value(point)  # type: ignore[attr-defined]


@login_required
def job_row(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    job, _role = _job(request, workspace, name)
    metric = request.GET.get("metric", "").strip()[:250]
    if metric:
        _with_metric([job], metric)
    context = {"job": job, "workspace": job.workspace, "metric": metric}
    return render(request, "jobs/_row.html", context)


@login_required
def job_detail(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    job, role = _job(request, workspace, name)
    made = {
        use.name: use.asset
        for use in job.data_uses.filter(direction="output").select_related("asset")
    }
    context = {
        "job": job,
        "workspace": job.workspace,
        "can_cancel": access.can(role, Role.CONTRIBUTOR) and not job.is_terminal,
        "history": job.status_changes.all(),
        "run_id": job.run_id,
        "data_inputs": [_data_read(name, d) for name, d in (job.data_inputs or {}).items()],
        "outputs": [
            {
                "name": name,
                "files": outputs.files_of(job, name),
                "destination": (job.data_outputs or {}).get(name),
                "asset": made.get(name),
            }
            for name in outputs.output_names(job)
        ],
    }
    if is_htmx_partial(request) and request.GET.get("part") == "overview":
        return render(request, "jobs/_overview.html", context)
    return render(request, "jobs/detail.html", context)


def _data_read(name: str, recorded: dict[str, str]) -> dict[str, str]:
    asset = recorded.get("asset") or ""
    return {"name": name, "uri": recorded["uri"], "asset": asset,
            "asset_name": asset.rpartition(":")[0]}  # fmt: skip


@login_required
def metrics(request: HttpRequest, workspace: str, name: str) -> JsonResponse:
    """The job's MLflow run for its Metrics charts: each metric by step, params, tags."""
    job, _role = _job(request, workspace, name)
    run = Run.objects.filter(run_id=job.run_id).first()
    if run is None:
        return JsonResponse({"run_id": None, "metrics": {}, "params": {}, "tags": {}})
    return JsonResponse(tracking.charts(run))


MAX_COMPARED = 50


@login_required
def compare(request: HttpRequest, workspace: str) -> HttpResponseBase:
    """One metric overlaid across the jobs picked in the job list (`?jobs=a&jobs=b`), with
    the chart's data as CSV or JSON (`?format=csv|json`)."""
    ws, _role = access.workspace_for(request.user, workspace)
    names = list(dict.fromkeys(request.GET.getlist("jobs")))[:MAX_COMPARED]
    jobs = list(
        Job.objects.filter(workspace=ws, name__in=names).only("name", "workspace_id", "run_id")
    )
    run_ids = {job.run_id: job.name for job in jobs}
    order = {name: index for index, name in enumerate(names)}  # as they were picked
    runs = sorted(Run.objects.filter(run_id__in=run_ids), key=lambda r: order[run_ids[r.run_id]])
    keys = sorted({k for run in runs for k in run.latest_metrics})
    metric = request.GET.get("metric") or next((k for k in keys if not k.startswith("system/")),
                                               keys[0] if keys else "")  # fmt: skip
    series = tracking.compare(runs, metric) if metric else []
    wanted = request.GET.get("format")
    if wanted == "json":
        return JsonResponse({"metric": metric, "series": series})
    if wanted == "csv":
        lines = ["job,step,value"] + [
            f"{s['name']},{step},{value}"
            for s in series
            for step, value in zip(s["steps"], s["values"], strict=True)
        ]
        response = HttpResponse("\n".join(lines) + "\n", content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="compare-{metric}.csv"'
        return response
    context = {
        "workspace": ws,
        "jobs": [job.name for job in jobs],
        "missing": [n for n in names if n not in {job.name for job in jobs}],
        "keys": keys,
        "metric": metric,
        "series": series,
        "query": request.GET.urlencode(),
    }
    return render(request, "jobs/compare.html", context)


@login_required
@require_POST
def cancel(request: HttpRequest, workspace: str, name: str) -> HttpResponse:
    job, _role = _job(request, workspace, name, Role.CONTRIBUTOR)
    try:
        services.cancel(job)
        messages.success(request, f"Cancel requested for {job.name}.")
    except services.JobConflict as exc:
        messages.error(request, str(exc))
    return redirect("jobs:detail", workspace=workspace, name=name)


@login_required
def log_text(request: HttpRequest, workspace: str, name: str) -> HttpResponseBase:
    """The whole log as a text file, streamed (`?timestamps=1` prefixes each line)."""
    job, _role = _job(request, workspace, name)
    lines = services.log_text(job, timestamps=request.GET.get("timestamps") == "1")
    response = StreamingHttpResponse(lines, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.name}.log"'
    return response


@login_required
def download(request: HttpRequest, workspace: str, name: str, output: str) -> HttpResponseBase:
    return output_download(_job(request, workspace, name)[0], output)


@login_required
def download_file(
    request: HttpRequest, workspace: str, name: str, output: str, path: str
) -> HttpResponseBase:
    return output_file(_job(request, workspace, name)[0], output, path)


def output_download(job: Job, output: str) -> HttpResponseBase:
    """One output as a zip attachment, streamed; shared with the API."""
    try:
        stream = outputs.zip_stream(job, output)
    except outputs.NoSuchOutput as exc:
        raise Http404(str(exc)) from exc
    response = StreamingHttpResponse(stream, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{job.name}-{output}.zip"'
    return response


def output_file(job: Job, output: str, path: str) -> HttpResponseBase:
    """One file of an output, streamed; shared with the API."""
    try:
        f = outputs.open_file(job, output, path)
    except outputs.NoSuchOutput as exc:
        raise Http404(str(exc)) from exc
    return FileResponse(f, as_attachment=True, filename=PurePosixPath(path).name)


@login_required
@require_POST
def local_inputs(request: HttpRequest, workspace: str) -> HttpResponse:
    """The file fields the pasted YAML needs: one per input with a local path."""
    access.workspace_for(request.user, workspace, Role.CONTRIBUTOR)
    try:
        data = load_yaml(request.POST.get("spec", ""))
    except SpecError:
        data = {}
    inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
    needed = [
        {"name": name, "type": item["type"], "path": str(item.get("path", ""))}
        for name, item in (inputs or {}).items()
        if isinstance(item, dict)
        and item.get("type") in ("uri_file", "uri_folder", "mltable")
        and "://" not in str(item.get("path", ""))
        and not str(item.get("path", "")).startswith("azureml:")
    ]
    return render(request, "jobs/_local_inputs.html", {"needed": needed})


@login_required
def submit(request: HttpRequest, workspace: str) -> HttpResponse:
    ws, _role = access.workspace_for(request.user, workspace, Role.CONTRIBUTOR)
    form = SubmitJobForm(ws, request.POST or None, request.FILES or None)
    spec_errors: list[tuple[str, str]] = []
    if request.method == "POST" and form.is_valid():
        try:
            data = load_yaml(form.cleaned_data["spec"])
            if form.cleaned_data["compute"] is not None:
                data["compute"] = form.cleaned_data["compute"].name
            if form.cleaned_data["instance_type"]:
                data.setdefault("resources", {})
                if isinstance(data["resources"], dict):
                    data["resources"]["instance_type"] = form.cleaned_data["instance_type"]
            uploads = {
                key: services.Upload(file=upload, filename=upload.name or key)
                for key, upload in request.FILES.items()
                if key.startswith("inputs.") and isinstance(upload, UploadedFile)
            }
            if form.cleaned_data.get("code"):
                upload = form.cleaned_data["code"]
                uploads["code"] = services.Upload(file=upload, filename=upload.name)
            job = services.submit(
                ws, request.user, data, uploads, source_yaml=form.cleaned_data["spec"]
            )
        except SpecError as exc:
            spec_errors = exc.errors
        else:
            return redirect("jobs:detail", workspace=ws.name, name=job.name)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "jobs/submit.html",
        {"workspace": ws, "form": form, "spec_errors": spec_errors},
        status=status,
    )
