"""Tracking as MLflow defines it: experiments, runs, params, tags, metric points, with
MLflow's limits and error codes. Called by the MLflow REST API and, later, the pages."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Window
from django.db.models.functions import Mod, RowNumber

from studio.events import publish
from studio.models import Workspace
from tracking import events, search
from tracking.errors import TrackingError, int64, invalid
from tracking.models import Experiment, Lifecycle, Metric, Run, RunStatus

DEFAULT_EXPERIMENT = "Default"
# MLflow's limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_RESULTS = 1000  # a page of runs or experiments
MAX_HISTORY_PAGE = 25000  # a page of a metric's history: no request loads it all


def now_ms() -> int:
    return int(time.time() * 1000)


# -- experiments -----------------------------------------------------------------------------
def default_experiment(workspace: Workspace) -> Experiment:
    experiment, _ = Experiment.objects.get_or_create(workspace=workspace, name=DEFAULT_EXPERIMENT)
    return experiment


def create_experiment(
    workspace: Workspace, name: str, artifact_location: str = "", tags: dict[str, str] | None = None
) -> Experiment:
    if not name or not name.strip():
        raise invalid("Invalid experiment name: ''. Experiment name must not be empty.")
    if len(name) > 500:
        raise invalid("Experiment name is longer than 500 characters.")
    try:
        with transaction.atomic():
            return Experiment.objects.create(
                workspace=workspace, name=name, artifact_location=artifact_location,
                tags=dict(tags or {}),
            )  # fmt: skip
    except IntegrityError as exc:
        raise TrackingError(
            "RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) already exists."
        ) from exc


def get_experiment(workspace: Workspace, experiment_id: str) -> Experiment:
    if experiment_id == "0":  # MLflow's default experiment, which every client assumes
        return default_experiment(workspace)
    found = (
        Experiment.objects.filter(workspace=workspace, pk=experiment_id).first()
        if str(experiment_id).isdigit()
        else None
    )
    if found is None:
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id} exists"
        )
    return found


def experiment_by_name(workspace: Workspace, name: str) -> Experiment:
    found = Experiment.objects.filter(workspace=workspace, name=name).first()
    if found is None:
        if name == DEFAULT_EXPERIMENT:
            return default_experiment(workspace)
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name {name}"
        )
    return found


def page_bounds(max_results: Any, page_token: Any, limit: int) -> tuple[int, int]:
    """(offset, size) from MLflow's max_results and page_token (an offset here)."""
    try:
        size = int(max_results) if max_results not in (None, "") else limit
        offset = int(page_token) if page_token else 0
    except (TypeError, ValueError) as exc:
        raise invalid(f"max_results and page_token must be numbers: {exc}") from exc
    if size < 1 or size > limit:
        raise invalid(f"Invalid value {size} for parameter 'max_results': it must be at most "
                      f"{limit} and positive")  # fmt: skip
    if offset < 0:
        raise invalid("Invalid page token")
    return offset, size


def paged(query: QuerySet[Any], offset: int, size: int) -> tuple[list[Any], str]:
    rows = list(query[offset : offset + size + 1])
    token = str(offset + size) if len(rows) > size else ""
    return rows[:size], token


EXPERIMENT_FIELDS = search.Fields({"name": "name"}, metrics=False)
EXPERIMENT_ORDER = {"name": "name", "creation_time": "created_at",
                    "last_update_time": "updated_at", "experiment_id": "id"}  # fmt: skip


def search_experiments(
    workspace: Workspace, view_type: str, max_results: Any, page_token: Any,
    text: str = "", order_by: Any = None,
) -> tuple[list[Experiment], str]:  # fmt: skip
    """MLflow's experiment search: `name LIKE 'fit%' and tags.team = 'blue'`, ordered by
    name, creation_time, last_update_time or experiment_id (ASC or DESC)."""
    default_experiment(workspace)
    found = search.apply(Experiment.objects.filter(workspace=workspace), text, EXPERIMENT_FIELDS)
    found = found.order_by(*search.ordering(order_by, EXPERIMENT_ORDER), "-created_at", "-id")
    if view_type in ("", None, "ACTIVE_ONLY", 1):
        found = found.filter(lifecycle_stage=Lifecycle.ACTIVE)
    elif view_type in ("DELETED_ONLY", 2):
        found = found.filter(lifecycle_stage=Lifecycle.DELETED)
    offset, size = page_bounds(max_results, page_token, MAX_RESULTS)
    return paged(found, offset, size)


def set_experiment_lifecycle(experiment: Experiment, stage: str) -> None:
    experiment.lifecycle_stage = stage
    experiment.save(update_fields=["lifecycle_stage", "updated_at"])


def rename_experiment(experiment: Experiment, name: str) -> None:
    if not name:
        raise invalid("Experiment name must not be empty.")
    if (
        Experiment.objects.filter(workspace=experiment.workspace, name=name)
        .exclude(pk=experiment.pk)
        .exists()
    ):
        raise invalid(f"Experiment '{name}' already exists.")
    experiment.name = name
    experiment.save(update_fields=["name", "updated_at"])


# -- runs ------------------------------------------------------------------------------------
def create_run(
    experiment: Experiment,
    name: str = "",
    user_id: str = "",
    start_time: int | None = None,
    tags: dict[str, str] | None = None,
) -> Run:
    if experiment.lifecycle_stage != Lifecycle.ACTIVE:
        raise invalid(f"The experiment {experiment.pk} must be in the 'active' state.")
    tags = dict(tags or {})
    name = name or tags.get("mlflow.runName", "")
    if name:
        tags["mlflow.runName"] = name
    _check_tags(tags)
    start = int64(start_time, "start_time") if start_time is not None else now_ms()
    return Run.objects.create(
        experiment=experiment, name=name, user_id=user_id, start_time=start, tags=tags
    )


def get_run(workspace: Workspace, run_id: str) -> Run:
    found = (
        Run.objects.select_related("experiment")
        .filter(run_id=run_id, experiment__workspace=workspace)
        .first()
    )
    if found is None:
        raise TrackingError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
    return found


def check_active(run: Run) -> None:
    if run.lifecycle_stage != Lifecycle.ACTIVE:
        raise invalid(f"The run {run.run_id} must be in the 'active' state.")


def update_run(run: Run, status: str | None, end_time: int | None, name: str | None) -> Run:
    check_active(run)
    fields = []
    if status:
        if status not in RunStatus.values:
            raise invalid(f"Invalid run status {status!r}")
        run.status = status
        fields.append("status")
    if end_time is not None:
        run.end_time = int64(end_time, "end_time")
        fields.append("end_time")
    if name:
        run.name = name
        run.tags = {**run.tags, "mlflow.runName": name}
        fields += ["name", "tags"]
    if fields:
        run.save(update_fields=fields)
    if status:
        publish(events.run_changed(run.run_id, set(), run.status))
    return run


def set_run_lifecycle(run: Run, stage: str) -> None:
    run.lifecycle_stage = stage
    run.save(update_fields=["lifecycle_stage"])


@dataclass
class Point:
    key: str
    value: float
    timestamp: int
    step: int


def _key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise invalid(f"Invalid {what} name: {key!r}. It must be a non-empty string.")
    if len(key) > MAX_KEY:
        raise invalid(f"{what.capitalize()} name '{key[:40]}...' is longer than {MAX_KEY}.")
    return key


def pairs(entries: Any, field: str) -> dict[str, str]:
    """MLflow's [{"key", "value"}] lists (tags of a new run or experiment) as a mapping."""
    if entries is None:
        return {}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("key"), str) for e in entries
    ):
        raise invalid(f"'{field}' must be a list of objects with a key and a value")
    return {e["key"]: str(e.get("value", "")) for e in entries}


def _check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        _key(key, "tag")
        if len(str(value)) > MAX_TAG_VALUE:
            raise invalid(f"Tag '{key}' has a value longer than {MAX_TAG_VALUE} characters.")


def point(raw: dict[str, Any]) -> Point:
    key = _key(raw.get("key"), "metric")
    try:
        value = float(raw["value"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"Got invalid value for metric '{key}': {exc}") from exc
    stamp = raw.get("timestamp")
    timestamp = int64(stamp, "timestamp") if stamp is not None else now_ms()
    step = int64(raw.get("step") or 0, "step")
    return Point(key, value, timestamp, step)


def log_batch(
    run: Run,
    metrics: list[dict[str, Any]],
    params: list[dict[str, Any]],
    tags: list[dict[str, Any]],
) -> None:
    """Everything or nothing: a bad entry refuses the whole batch, as MLflow does."""
    for field, entries in (("metrics", metrics), ("params", params), ("tags", tags)):
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise invalid(f"'{field}' must be a list of objects with a key and a value")
    if len(metrics) > MAX_METRICS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_METRICS_PER_BATCH} "
                      f"metrics. Got {len(metrics)} metrics.")  # fmt: skip
    if len(params) > MAX_PARAMS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_PARAMS_PER_BATCH} "
                      f"params. Got {len(params)} params.")  # fmt: skip
    if len(tags) > MAX_TAGS_PER_BATCH:
        raise invalid(f"A batch logging request can contain at most {MAX_TAGS_PER_BATCH} "
                      f"tags. Got {len(tags)} tags.")  # fmt: skip
    points = [point(m) for m in metrics]
    new_params = {_key(p.get("key"), "param"): str(p.get("value", "")) for p in params}
    new_tags = {_key(t.get("key"), "tag"): str(t.get("value", "")) for t in tags}
    for key, value in new_params.items():
        if len(value) > MAX_PARAM_VALUE:
            raise invalid(f"Param '{key}' has a value longer than {MAX_PARAM_VALUE} characters.")
    _check_tags(new_tags)
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        check_active(run)
        for key, value in new_params.items():
            if key in run.params and run.params[key] != value:
                raise invalid(
                    f"Changing param values is not allowed. Param with key='{key}' was already "
                    f"logged with value='{run.params[key]}' for run ID='{run.run_id}'. "
                    f"Attempted logging new value '{value}'."
                )
        Metric.objects.bulk_create(
            Metric(run=run, key=p.key, value=0.0 if math.isnan(p.value) else p.value,
                   is_nan=math.isnan(p.value), timestamp=p.timestamp, step=p.step)
            for p in points
        )  # fmt: skip
        latest = dict(run.latest_metrics)
        for p in points:
            seen = latest.get(p.key)
            if seen is None or (p.step, p.timestamp) >= (seen["step"], seen["timestamp"]):
                latest[p.key] = latest_point(p)
        run.params = {**run.params, **new_params}
        run.tags = {**run.tags, **new_tags}
        run.latest_metrics = latest
        run.save(update_fields=["params", "tags", "latest_metrics"])
        if points:  # live charts reload these (after commit)
            publish(events.run_changed(run.run_id, {p.key for p in points}))


def delete_tag(run: Run, key: str) -> None:
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        check_active(run)
        if key not in run.tags:
            raise TrackingError(
                "RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in run with id {run.run_id}"
            )
        run.tags = {k: v for k, v in run.tags.items() if k != key}
        run.save(update_fields=["tags"])


def metric_history(
    run: Run, key: str, max_results: Any, page_token: Any
) -> tuple[list[Metric], str]:
    offset, size = page_bounds(max_results, page_token, MAX_HISTORY_PAGE)
    points = Metric.objects.filter(run=run, key=key).order_by("step", "timestamp", "id")
    return paged(points, offset, size)


ORDERABLE = {"start_time": "start_time", "end_time": "end_time", "run_name": "name",
             "status": "status"}  # fmt: skip


def search_runs(
    workspace: Workspace,
    experiment_ids: list[str],
    filter_string: str,
    view_type: str,
    max_results: Any,
    order_by: list[str],
    page_token: Any,
) -> tuple[list[Run], str]:
    ids = [get_experiment(workspace, str(e)).pk for e in experiment_ids]
    runs = Run.objects.filter(experiment_id__in=ids).select_related("experiment")
    if view_type in ("", None, "ACTIVE_ONLY", 1):
        runs = runs.filter(lifecycle_stage=Lifecycle.ACTIVE)
    elif view_type in ("DELETED_ONLY", 2):
        runs = runs.filter(lifecycle_stage=Lifecycle.DELETED)
    ordering = []
    for clause in order_by or []:
        words = clause.replace("attributes.", "").replace("attribute.", "").split()
        field = ORDERABLE.get(words[0]) if words else None
        if field is None:
            raise invalid(f"Invalid order_by clause {clause!r}: order by start_time, end_time, "
                          "run_name or status")  # fmt: skip
        descending = len(words) > 1 and words[1].upper() == "DESC"
        ordering.append(f"-{field}" if descending else field)
    if filter_string and filter_string.strip():
        runs = search.apply(runs, filter_string)
    runs = runs.order_by(*ordering, "-start_time", "-id")
    offset, size = page_bounds(max_results, page_token, 50000)
    return paged(runs, offset, size)


def metric_keys(workspace: Workspace, runs: int = 50) -> list[str]:
    """The metrics the workspace's newest runs logged, to offer as choices."""
    found = Run.objects.filter(experiment__workspace=workspace).order_by("-start_time", "-id")
    keys: set[str] = set()
    for latest in found.values_list("latest_metrics", flat=True)[:runs]:
        keys.update(latest)
    return sorted(keys)


def latest_point(p: Point) -> dict[str, Any]:
    """A metric's latest point as `Run.latest_metrics` keeps it (JSON: no NaN, no
    infinity)."""
    if math.isfinite(p.value):
        return {"value": p.value, "timestamp": p.timestamp, "step": p.step}
    # No "value" at all: a JSON null would read as 0 to SQLite's CAST.
    return {"special": finite(p.value), "timestamp": p.timestamp, "step": p.step}


def latest_value(point: dict[str, Any]) -> float | str | None:
    """What a latest point's value reads as: a number, or "NaN" / "Infinity" /
    "-Infinity", as MLflow writes them in JSON."""
    return point.get("special") or point.get("value")


def finite(value: float) -> float | str:
    """JSON has no NaN or infinity: MLflow sends them as strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# -- runs of the studio's jobs ---------------------------------------------------------------
JOB_STATUS = {"Completed": RunStatus.FINISHED, "Failed": RunStatus.FAILED,
              "Canceled": RunStatus.KILLED}  # fmt: skip


def start_job_run(
    workspace: Workspace, experiment_name: str, run_id: str, name: str, user_id: str,
    tags: dict[str, str],
) -> Run:  # fmt: skip
    """The MLflow run every job is: made when the job starts, in its experiment, under the
    run id the job was given (so a retried start finds its run)."""
    experiment, _ = Experiment.objects.get_or_create(workspace=workspace, name=experiment_name)
    run, _ = Run.objects.get_or_create(
        run_id=run_id,
        defaults={"experiment": experiment, "name": name, "user_id": user_id,
                  "start_time": now_ms(), "tags": {"mlflow.runName": name, **tags}},
    )  # fmt: skip
    return run


def end_job_run(run_id: str, job_status: str) -> None:
    """The run's status follows its job's end."""
    status = JOB_STATUS.get(job_status)
    if status is not None:
        Run.objects.filter(run_id=run_id).update(status=status, end_time=now_ms())
        publish(events.run_changed(run_id, set(), status))


MAX_CHART_POINTS = 2000  # per metric: a chart shows the shape, the history API every point


def thinned(run: Run, key: str) -> tuple[list[tuple[int, float, int]], int]:
    """A metric's (step, value, timestamp) in step order, every n-th of them past
    MAX_CHART_POINTS (thinned by the database: a million points never reach memory),
    keeping the last; and how many there are."""
    points = Metric.objects.filter(run=run, key=key)
    total = points.count()
    every = max(1, math.ceil(total / MAX_CHART_POINTS))
    order = ("step", "timestamp", "id")
    if every > 1:
        numbered = points.annotate(
            n=Window(RowNumber(), order_by=[F(f).asc() for f in order])
        ).annotate(rest=Mod(F("n") - 1, every))
        points = numbered.filter(rest=0)
    rows = list(points.order_by(*order).values_list("step", "value", "timestamp", "is_nan"))
    if every > 1:
        last = (
            Metric.objects.filter(run=run, key=key)
            .order_by(*order)
            .values_list("step", "value", "timestamp", "is_nan")
            .last()
        )
        if last is not None and rows and rows[-1] != last:
            rows.append(last)
    return [(r[0], math.nan if r[3] else r[1], r[2]) for r in rows], total


def charts(run: Run) -> dict[str, Any]:
    """Each metric's points by step for a chart (at most about MAX_CHART_POINTS each), with
    the run's params and tags: what a job's Metrics tab shows."""
    series: dict[str, Any] = {}
    for key in sorted(run.latest_metrics):
        rows, total = thinned(run, key)
        series[key] = {
            "steps": [r[0] for r in rows],
            "values": [finite(r[1]) for r in rows],
            "timestamps": [r[2] for r in rows],
            "points": total,
        }
    return {
        "run_id": run.run_id,
        "status": run.status,
        "metrics": series,
        "params": run.params,
        "tags": {k: v for k, v in run.tags.items() if not k.startswith("mlflow.")},
    }


def compare(runs: list[Run], key: str) -> list[dict[str, Any]]:
    """One metric across runs, each thinned as a chart shows it: what the compare view
    draws and downloads."""
    series = []
    for run in runs:
        rows, _total = thinned(run, key)
        series.append({"run_id": run.run_id, "name": run.tags.get("kstudio.job") or run.name,
                       "steps": [r[0] for r in rows],
                       "values": [finite(r[1]) for r in rows]})  # fmt: skip
    return series
