"""MLflow's REST API (`/api/2.0/mlflow/...`) as the stock `mlflow` client speaks it, one
tracking URI per workspace: `<studio>/workspaces/<workspace>/mlflow`.

The client authenticates with `MLFLOW_TRACKING_TOKEN` (a studio API token, sent as a
Bearer token); errors come back in MLflow's shape, `{"error_code", "message"}`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt

from studio import access
from studio.auth import key_from_header, user_for_key
from studio.documents import DocumentError, check_bounds
from studio.models import Role, Workspace
from tracking import logged_models, services
from tracking.errors import TrackingError, invalid
from tracking.models import Experiment, Lifecycle, LoggedModel, Run
from tracking.services import finite, latest_value

STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "BAD_REQUEST": 400,
    "INVALID_STATE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
}


def error(code: str, message: str) -> JsonResponse:
    return JsonResponse({"error_code": code, "message": message}, status=STATUS.get(code, 400))


# -- shapes ----------------------------------------------------------------------------------
def experiment_json(experiment: Experiment) -> dict[str, Any]:
    return {
        "experiment_id": str(experiment.pk),
        "name": experiment.name,
        "artifact_location": experiment.artifact_location or f"mlflow-artifacts:/{experiment.pk}",
        "lifecycle_stage": experiment.lifecycle_stage,
        "creation_time": int(experiment.created_at.timestamp() * 1000),
        "last_update_time": int(experiment.updated_at.timestamp() * 1000),
        "tags": [{"key": k, "value": v} for k, v in experiment.tags.items()],
    }


def run_info(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": run.run_id,
        "run_uuid": run.run_id,
        "run_name": run.name,
        "experiment_id": str(run.experiment_id),
        "user_id": run.user_id,
        "status": run.status,
        "artifact_uri": f"mlflow-artifacts:/{run.experiment_id}/{run.run_id}/artifacts",
        "lifecycle_stage": run.lifecycle_stage,
    }
    if run.start_time is not None:
        info["start_time"] = run.start_time
    if run.end_time is not None:
        info["end_time"] = run.end_time
    return info


def run_json(run: Run) -> dict[str, Any]:
    return {
        "info": run_info(run),
        "data": {
            "metrics": [
                {
                    "key": k,
                    "value": latest_value(m),
                    "timestamp": m["timestamp"],
                    "step": m["step"],
                }
                for k, m in run.latest_metrics.items()
            ],
            "params": [{"key": k, "value": v} for k, v in run.params.items()],
            "tags": [{"key": k, "value": v} for k, v in run.tags.items()],
        },
        "inputs": run.inputs or {},
        "outputs": run.outputs or {},
    }


def logged_model_json(model: LoggedModel) -> dict[str, Any]:
    info: dict[str, Any] = {
        "model_id": model.model_id,
        "experiment_id": str(model.experiment_id),
        "name": model.name,
        "creation_timestamp_ms": model.created_at,
        "last_updated_timestamp_ms": model.updated_at,
        "artifact_uri": logged_models.artifact_uri(model),
        "status": model.status,
        "model_type": model.model_type,
        "tags": [{"key": k, "value": v} for k, v in model.tags.items()],
    }
    if model.creator_id.isdigit():  # MLflow's is a number: the user's id here
        info["creator_id"] = int(model.creator_id)
    if model.run is not None:
        info["source_run_id"] = model.run.run_id
    params = [{"key": k, "value": v} for k, v in model.params.items()]
    return {"info": info, "data": {"params": params, "metrics": []}}


# -- the endpoints ---------------------------------------------------------------------------
Handler = Callable[[Workspace, dict[str, Any], Any], dict[str, Any]]


def _experiment_create(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    tags = services.pairs(body.get("tags"), "tags")
    made = services.create_experiment(
        ws, body.get("name", ""), body.get("artifact_location") or "", tags
    )
    return {"experiment_id": str(made.pk)}


def _experiment_get(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {"experiment": experiment_json(services.get_experiment(ws, _id(body)))}


def _experiment_by_name(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    name = body.get("experiment_name") or ""
    return {"experiment": experiment_json(services.experiment_by_name(ws, name))}


def _experiment_search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    found, token = services.search_experiments(
        ws, body.get("view_type") or "", body.get("max_results"), body.get("page_token"),
        str(body.get("filter") or ""), body.get("order_by"),
    )  # fmt: skip
    answer: dict[str, Any] = {"experiments": [experiment_json(e) for e in found]}
    if token:
        answer["next_page_token"] = token
    return answer


def _experiment_update(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.rename_experiment(services.get_experiment(ws, _id(body)), body.get("new_name", ""))
    return {}


def _experiment_delete(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.set_experiment_lifecycle(services.get_experiment(ws, _id(body)), Lifecycle.DELETED)
    return {}


def _experiment_restore(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.set_experiment_lifecycle(services.get_experiment(ws, _id(body)), Lifecycle.ACTIVE)
    return {}


def _id(body: dict[str, Any]) -> str:
    value = body.get("experiment_id")
    if value in (None, ""):
        raise invalid("Missing value for required parameter 'experiment_id'.")
    return str(value)


def _run(ws: Workspace, body: dict[str, Any]) -> Run:
    run_id = body.get("run_id") or body.get("run_uuid")
    if not run_id:
        raise invalid("Missing value for required parameter 'run_id'.")
    return services.get_run(ws, str(run_id))


def _run_create(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    experiment = services.get_experiment(ws, str(body.get("experiment_id") or "0"))
    tags = services.pairs(body.get("tags"), "tags")
    run = services.create_run(
        experiment, body.get("run_name") or "", body.get("user_id") or user.get_username(),
        body.get("start_time"), tags,
    )  # fmt: skip
    return {"run": run_json(run)}


def _run_get(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {"run": run_json(_run(ws, body))}


def _run_update(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    run = services.update_run(
        _run(ws, body), body.get("status"), body.get("end_time"), body.get("run_name")
    )
    return {"run_info": run_info(run)}


def _run_delete(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.set_run_lifecycle(_run(ws, body), Lifecycle.DELETED)
    return {}


def _run_restore(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.set_run_lifecycle(_run(ws, body), Lifecycle.ACTIVE)
    return {}


def _log_metric(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.log_batch(_run(ws, body), [body], [], [])
    return {}


def _log_param(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.log_batch(_run(ws, body), [], [body], [])
    return {}


def _set_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.log_batch(_run(ws, body), [], [], [body])
    return {}


def _delete_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.delete_tag(_run(ws, body), str(body.get("key") or ""))
    return {}


def _log_batch(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    services.log_batch(
        _run(ws, body), body.get("metrics") or [], body.get("params") or [],
        body.get("tags") or [],
    )  # fmt: skip
    return {}


def _history(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    run = _run(ws, body)
    points, token = services.metric_history(
        run, str(body.get("metric_key") or ""), body.get("max_results"), body.get("page_token")
    )
    answer: dict[str, Any] = {
        "metrics": [
            {"key": p.key, "value": finite(p.reading), "timestamp": p.timestamp, "step": p.step}
            for p in points
        ]
    }
    if token:
        answer["next_page_token"] = token
    return answer


def _run_search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    runs, token = services.search_runs(
        ws, [str(e) for e in body.get("experiment_ids") or []], body.get("filter") or "",
        body.get("run_view_type") or "", body.get("max_results"), body.get("order_by") or [],
        body.get("page_token"),
    )  # fmt: skip
    answer: dict[str, Any] = {"runs": [run_json(r) for r in runs]}
    if token:
        answer["next_page_token"] = token
    return answer


def _log_inputs(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.log_inputs(_run(ws, body), body.get("datasets"), body.get("models"))
    return {}


def _log_outputs(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.log_outputs(ws, _run(ws, body), body.get("models"))
    return {}


# -- MLflow 3's logged models ------------------------------------------------------------------
def _model(ws: Workspace, body: dict[str, Any]) -> LoggedModel:
    return logged_models.get(ws, str(body.get("model_id") or ""))


def _logged_model_create(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    experiment = services.get_experiment(ws, str(body.get("experiment_id") or "0"))
    run_id = body.get("source_run_id")
    run = services.get_run(ws, str(run_id)) if run_id else None
    model = logged_models.create(
        experiment, str(body.get("name") or ""), str(body.get("model_type") or ""), run,
        str(user.pk), services.pairs(body.get("tags"), "tags"),
        services.pairs(body.get("params"), "params"),
    )  # fmt: skip
    return {"model": logged_model_json(model)}


def _logged_model_get(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {"model": logged_model_json(_model(ws, body))}


def _logged_model_finalize(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {
        "model": logged_model_json(logged_models.finalize(_model(ws, body), body.get("status")))
    }


def _logged_model_delete(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.delete(_model(ws, body))
    return {}


def _logged_model_tags(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.set_tags(_model(ws, body), body.get("tags"))
    return {}


def _logged_model_delete_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.delete_tag(_model(ws, body), str(body.get("tag_key") or ""))
    return {}


def _logged_model_params(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    logged_models.log_params(_model(ws, body), body.get("params"))
    return {}


def _logged_models_search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    for experiment_id in body.get("experiment_ids") or []:
        services.get_experiment(ws, str(experiment_id))
    found, token = logged_models.search_models(
        ws, [str(e) for e in body.get("experiment_ids") or []], body.get("filter") or "",
        body.get("max_results"), body.get("page_token"),
    )  # fmt: skip
    answer: dict[str, Any] = {"models": [logged_model_json(m) for m in found]}
    if token:
        answer["next_page_token"] = token
    return answer


# endpoint -> (HTTP method, the role it needs, handler); `{name}` parts of a path come to
# the handler in the body, as MLflow's own server passes them.
ENDPOINTS: dict[str, tuple[str, str, Handler]] = {
    "experiments/create": ("POST", Role.CONTRIBUTOR, _experiment_create),
    "experiments/get": ("GET", Role.READER, _experiment_get),
    "experiments/get-by-name": ("GET", Role.READER, _experiment_by_name),
    "experiments/search": ("POST", Role.READER, _experiment_search),
    "experiments/update": ("POST", Role.CONTRIBUTOR, _experiment_update),
    "experiments/delete": ("POST", Role.CONTRIBUTOR, _experiment_delete),
    "experiments/restore": ("POST", Role.CONTRIBUTOR, _experiment_restore),
    "runs/create": ("POST", Role.CONTRIBUTOR, _run_create),
    "runs/get": ("GET", Role.READER, _run_get),
    "runs/update": ("POST", Role.CONTRIBUTOR, _run_update),
    "runs/delete": ("POST", Role.CONTRIBUTOR, _run_delete),
    "runs/restore": ("POST", Role.CONTRIBUTOR, _run_restore),
    "runs/search": ("POST", Role.READER, _run_search),
    "runs/log-metric": ("POST", Role.CONTRIBUTOR, _log_metric),
    "runs/log-parameter": ("POST", Role.CONTRIBUTOR, _log_param),
    "runs/set-tag": ("POST", Role.CONTRIBUTOR, _set_tag),
    "runs/delete-tag": ("POST", Role.CONTRIBUTOR, _delete_tag),
    "runs/log-batch": ("POST", Role.CONTRIBUTOR, _log_batch),
    "metrics/get-history": ("GET", Role.READER, _history),
    "runs/log-inputs": ("POST", Role.CONTRIBUTOR, _log_inputs),
    "runs/outputs": ("POST", Role.CONTRIBUTOR, _log_outputs),
    "logged-models": ("POST", Role.CONTRIBUTOR, _logged_model_create),
    "logged-models/search": ("POST", Role.READER, _logged_models_search),
    "logged-models/{model_id}": ("GET", Role.READER, _logged_model_get),
    "PATCH logged-models/{model_id}": ("PATCH", Role.CONTRIBUTOR, _logged_model_finalize),
    "DELETE logged-models/{model_id}": ("DELETE", Role.CONTRIBUTOR, _logged_model_delete),
    "logged-models/{model_id}/tags": ("PATCH", Role.CONTRIBUTOR, _logged_model_tags),
    "logged-models/{model_id}/tags/{tag_key}": (
        "DELETE",
        Role.CONTRIBUTOR,
        _logged_model_delete_tag,
    ),
    "logged-models/{model_id}/params": ("POST", Role.CONTRIBUTOR, _logged_model_params),
}


# What a job's own token may write, and only for its run (or, for logged models, the
# models its run made: checked by `_job_may_write`).
RUN_WRITES = {"runs/update", "runs/log-metric", "runs/log-parameter", "runs/set-tag",
              "runs/delete-tag", "runs/log-batch", "runs/log-inputs", "runs/outputs"}  # fmt: skip
MODEL_WRITES = {"logged-models", "PATCH logged-models/{model_id}",
                "DELETE logged-models/{model_id}", "logged-models/{model_id}/tags",
                "logged-models/{model_id}/tags/{tag_key}",
                "logged-models/{model_id}/params"}  # fmt: skip
Table = dict[str, tuple[str, str, Handler]]
Route = tuple[str, str, str, Handler, dict[str, str]]


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    path = template.split(" ", 1)[-1]
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$")


def route(table: Table, method: str, name: str) -> Route | None:
    """(key, method, role, handler, path parts) for a request, or None."""
    for key, (wanted, role, handler) in table.items():
        if wanted != method:
            continue
        found = _pattern(key).match(name)
        if found:
            return key, method, role, handler, found.groupdict()
    return None


def _job_may_write(ws: Workspace, key: str, body: dict[str, Any], only_run: str) -> bool:
    """Whether a job's token may make this write: to its own run, or to a logged model
    its run made (or makes)."""
    if key in RUN_WRITES:
        return (body.get("run_id") or body.get("run_uuid")) == only_run
    if key == "logged-models":
        # A job's process is its run, started or not (`log_model` before any
        # `start_run` sends no run): the model is the run's.
        body["source_run_id"] = body.get("source_run_id") or only_run
        return body["source_run_id"] == only_run
    if key not in MODEL_WRITES:
        return False
    return LoggedModel.objects.filter(
        model_id=str(body.get("model_id") or ""), run__run_id=only_run,
        experiment__workspace=ws,
    ).exists()  # fmt: skip


def who(
    request: HttpRequest, workspace: str, role: str, *, may_write_run: bool
) -> tuple[Workspace, Any, str] | JsonResponse:
    """The caller's workspace, user, and the one run it may write ('' for any), or the
    MLflow error to answer. A user's API token acts with the user's role; a job's own
    token (STUDIO_TRACKING_IDENTITIES) reads its workspace and writes only its run."""
    key = key_from_header(request.headers.get("Authorization"))
    user, only_run = (user_for_key(key), "") if key else (None, "")
    if key and user is None:
        for path in settings.STUDIO_TRACKING_IDENTITIES:
            identity = import_string(path)(key)
            if identity is not None:
                user, token_workspace, only_run = identity
                if token_workspace != workspace:
                    return error("RESOURCE_DOES_NOT_EXIST", "No such workspace.")
                break
    if user is None:
        return error("UNAUTHENTICATED", "Set MLFLOW_TRACKING_TOKEN to a studio API token.")
    if only_run and role != Role.READER:
        role = Role.READER  # what the job may write is checked by the caller: its run only
        if not may_write_run:
            return error("PERMISSION_DENIED", "A job's token writes only the job's own run.")
    try:
        ws, _role = access.workspace_for(user, workspace, role)
    except Http404:
        return error("RESOURCE_DOES_NOT_EXIST", "No such workspace.")
    except PermissionDenied as exc:
        return error("PERMISSION_DENIED", str(exc))
    return ws, user, only_run


@csrf_exempt  # token authentication only: no cookie can make a request here
def endpoint(request: HttpRequest, workspace: str, name: str) -> JsonResponse:
    return serve(request, workspace, name, ENDPOINTS, _job_may_write)


JobMay = Callable[[Workspace, str, dict[str, Any], str], bool]


def serve(
    request: HttpRequest, workspace: str, name: str, table: Table, job_may: JobMay
) -> JsonResponse:
    """Answer one MLflow call from `table`: authenticate, authorize (a job's token writes
    only what `job_may` allows), read the body, run."""
    found = route(table, request.method or "GET", name)
    if found is None:
        if any(route(table, m, name) for m in ("GET", "POST", "PATCH", "DELETE")):
            return error("BAD_REQUEST", f"{name} does not take {request.method}")
        return error("ENDPOINT_NOT_FOUND", f"No such MLflow endpoint: {name}")
    key, method, role, handler, parts = found
    caller = who(request, workspace, role, may_write_run=True)
    if isinstance(caller, JsonResponse):
        return caller
    ws, user, only_run = caller
    if method == "GET":
        body: dict[str, Any] = {k: request.GET.get(k) for k in request.GET}
        for k in request.GET:  # repeated parameters (a search's order_by) stay lists
            if len(request.GET.getlist(k)) > 1:
                body[k] = request.GET.getlist(k)
    else:
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            return error("BAD_REQUEST", "The body must be JSON.")
        if not isinstance(body, dict):
            return error("BAD_REQUEST", "The body must be a JSON object.")
    try:
        check_bounds(body)
    except DocumentError as exc:  # nested too deep, or text no database can store
        field, problem = exc.errors[0]
        return error("INVALID_PARAMETER_VALUE", f"Invalid value for '{field}': {problem}")
    body.update(parts)
    if only_run and role != Role.READER and not job_may(ws, key, body, only_run):
        return error("PERMISSION_DENIED", "A job's token writes only the job's own run.")
    try:
        return JsonResponse(handler(ws, body, user))
    except TrackingError as exc:
        return error(exc.code, exc.message)
