"""MLflow 3's logged models (what `log_model` and autolog make) and a run's inputs and
outputs (the datasets it read, the models it wrote): the part of the tracking API that
`mlflow.sklearn.log_model`, `mlflow.autolog()` and `mlflow.register_model` need."""

from __future__ import annotations

from typing import Any

from studio.models import Workspace
from tracking import search
from tracking.errors import TrackingError, int64, invalid
from tracking.models import Experiment, Lifecycle, LoggedModel, LoggedModelStatus, Run
from tracking.services import MAX_RESULTS, check_active, now_ms, page_bounds, paged, pairs

FIELDS = search.Fields(
    {
        "name": "name",
        "model_id": "model_id",
        "model_type": "model_type",
        "status": "status",
        "source_run_id": "run__run_id",
        "creation_time": "created_at",
        "creation_timestamp": "created_at",
        "last_updated_timestamp": "updated_at",
    },
    frozenset({"creation_time", "creation_timestamp", "last_updated_timestamp"}),
    metrics=False,
)
MAX_INPUTS = 1000  # datasets a run may name: autolog adds one per fit


def artifact_uri(model: LoggedModel) -> str:
    return f"mlflow-artifacts:/{model.experiment_id}/models/{model.model_id}/artifacts"


def create(
    experiment: Experiment,
    name: str,
    model_type: str,
    run: Run | None,
    user_id: str,
    tags: dict[str, str],
    params: dict[str, str],
) -> LoggedModel:
    if not name or len(name) > 250:
        raise invalid("A logged model's name must be 1 to 250 characters.")
    if run is not None and run.experiment_id != experiment.pk:
        raise invalid(f"Run {run.run_id} is not in experiment {experiment.pk}.")
    now = now_ms()
    return LoggedModel.objects.create(
        experiment=experiment,
        name=name,
        model_type=model_type or "",
        run=run,
        creator_id=user_id,
        tags=tags,
        params=params,
        created_at=now,
        updated_at=now,
    )


def get(workspace: Workspace, model_id: str) -> LoggedModel:
    found = (
        LoggedModel.objects.select_related("run")
        .filter(model_id=model_id, experiment__workspace=workspace)
        .exclude(lifecycle_stage=Lifecycle.DELETED)
        .first()
    )
    if found is None:
        raise TrackingError("RESOURCE_DOES_NOT_EXIST", f"Logged model {model_id} not found.")
    return found


def finalize(model: LoggedModel, status: Any) -> LoggedModel:
    if status not in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):
        raise invalid(
            f"A logged model is finalized as {LoggedModelStatus.READY} or "
            f"{LoggedModelStatus.FAILED}, not {status!r}."
        )
    model.status = status
    model.updated_at = now_ms()
    model.save(update_fields=["status", "updated_at"])
    return model


def set_tags(model: LoggedModel, entries: Any) -> None:
    model.tags = {**model.tags, **pairs(entries, "tags")}
    model.updated_at = now_ms()
    model.save(update_fields=["tags", "updated_at"])


def delete_tag(model: LoggedModel, key: str) -> None:
    if key not in model.tags:
        raise TrackingError("RESOURCE_DOES_NOT_EXIST", f"No tag {key!r} on model {model.model_id}")
    model.tags = {k: v for k, v in model.tags.items() if k != key}
    model.save(update_fields=["tags"])


def log_params(model: LoggedModel, entries: Any) -> None:
    given = pairs(entries, "params")
    changed = {k for k, v in given.items() if k in model.params and model.params[k] != v}
    if changed:
        raise invalid(
            f"Params {sorted(changed)} were already logged with other values; a "
            "param never changes."
        )
    model.params = {**model.params, **given}
    model.save(update_fields=["params"])


def delete(model: LoggedModel) -> None:
    model.lifecycle_stage = Lifecycle.DELETED
    model.save(update_fields=["lifecycle_stage"])


def search_models(
    workspace: Workspace,
    experiment_ids: list[str],
    text: str,
    max_results: Any,
    page_token: Any,
) -> tuple[list[LoggedModel], str]:
    if not experiment_ids:
        raise invalid("experiment_ids must name at least one experiment.")
    found = (
        LoggedModel.objects.select_related("run")
        .filter(
            experiment__workspace=workspace,
            experiment_id__in=[int(e) for e in experiment_ids if str(e).isdigit()],
            lifecycle_stage=Lifecycle.ACTIVE,
        )
        .order_by("-created_at", "-id")
    )
    found = search.apply(found, text or "", FIELDS)
    offset, size = page_bounds(max_results, page_token, MAX_RESULTS)
    return paged(found, offset, size)


# -- a run's inputs and outputs --------------------------------------------------------------
def log_inputs(run: Run, datasets: Any, models: Any) -> None:
    """Datasets read (each once, by name and digest) and logged models used."""
    check_active(run)
    if not isinstance(datasets or [], list) or not isinstance(models or [], list):
        raise invalid("datasets and models must be lists.")
    inputs = dict(run.inputs or {})
    known = {
        (d["dataset"].get("name"), d["dataset"].get("digest"))
        for d in inputs.get("dataset_inputs", [])
    }
    for entry in datasets or []:
        dataset = entry.get("dataset") if isinstance(entry, dict) else None
        if not isinstance(dataset, dict) or not dataset.get("name"):
            raise invalid("Each dataset input needs a dataset with a name.")
        if (dataset.get("name"), dataset.get("digest")) not in known:
            inputs.setdefault("dataset_inputs", []).append(
                {"dataset": dataset, "tags": entry.get("tags") or []}
            )
            known.add((dataset.get("name"), dataset.get("digest")))
    for entry in models or []:
        if not isinstance(entry, dict) or not entry.get("model_id"):
            raise invalid("Each model input needs a model_id.")
        inputs.setdefault("model_inputs", []).append({"model_id": str(entry["model_id"])})
    if sum(len(v) for v in inputs.values()) > MAX_INPUTS:
        raise invalid(f"A run records at most {MAX_INPUTS} inputs.")
    run.inputs = inputs
    run.save(update_fields=["inputs"])


def log_outputs(workspace: Workspace, run: Run, models: Any) -> None:
    """The logged models a run wrote, each at a step."""
    if not isinstance(models or [], list):
        raise invalid("models must be a list.")
    outputs = list((run.outputs or {}).get("model_outputs", []))
    for entry in models or []:
        if not isinstance(entry, dict) or not entry.get("model_id"):
            raise invalid("Each model output needs a model_id.")
        get(workspace, str(entry["model_id"]))
        step = int64(entry.get("step") or 0, "step")
        outputs.append({"model_id": str(entry["model_id"]), "step": step})
    if len(outputs) > MAX_INPUTS:
        raise invalid(f"A run records at most {MAX_INPUTS} model outputs.")
    run.outputs = {"model_outputs": outputs}
    run.save(update_fields=["outputs"])
