"""MLflow's REST API (`/api/2.0/mlflow/...`) as the stock `mlflow` client speaks it, one
tracking URI per workspace: `<studio>/workspaces/<workspace>/mlflow`.

The client authenticates with `MLFLOW_TRACKING_TOKEN` (a studio API token, sent as a
Bearer token); errors come back in MLflow's shape, `{"error_code", "message"}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt

from studio import access
from studio.auth import key_from_header, user_for_key
from studio.models import Role, Workspace
from tracking import services
from tracking.errors import TrackingError, invalid
from tracking.models import Experiment, Lifecycle, Run
from tracking.services import finite

STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "BAD_REQUEST": 400,
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
                    "value": finite(m["value"]),
                    "timestamp": m["timestamp"],
                    "step": m["step"],
                }
                for k, m in run.latest_metrics.items()
            ],
            "params": [{"key": k, "value": v} for k, v in run.params.items()],
            "tags": [{"key": k, "value": v} for k, v in run.tags.items()],
        },
        "inputs": {},
    }


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
    if (body.get("filter") or "").strip():
        raise invalid("Experiment filters are not supported yet")
    found, token = services.search_experiments(
        ws, body.get("view_type") or "", body.get("max_results"), body.get("page_token")
    )
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
            {"key": p.key, "value": finite(p.value), "timestamp": p.timestamp, "step": p.step}
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


def _logged_models_search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    """MLflow 3's logged models: this studio keeps none yet (models come with the model
    registry), and says so as MLflow's own store would, with an empty page."""
    for experiment_id in body.get("experiment_ids") or []:
        services.get_experiment(ws, str(experiment_id))
    return {"models": []}


# endpoint -> (HTTP method, the role it needs, handler)
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
    "logged-models/search": ("POST", Role.READER, _logged_models_search),
}


# What a job's own token may write, and only for its run.
RUN_WRITES = {"runs/update", "runs/log-metric", "runs/log-parameter", "runs/set-tag",
              "runs/delete-tag", "runs/log-batch"}  # fmt: skip


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
    found = ENDPOINTS.get(name)
    if found is None:
        return error("ENDPOINT_NOT_FOUND", f"No such MLflow endpoint: {name}")
    method, role, handler = found
    if request.method != method:
        return error("BAD_REQUEST", f"{name} takes {method}")
    caller = who(request, workspace, role, may_write_run=name in RUN_WRITES)
    if isinstance(caller, JsonResponse):
        return caller
    ws, user, only_run = caller
    if method == "GET":
        body: dict[str, Any] = {k: request.GET.get(k) for k in request.GET}
    else:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return error("BAD_REQUEST", "The body must be JSON.")
        if not isinstance(body, dict):
            return error("BAD_REQUEST", "The body must be a JSON object.")
    if only_run and name in RUN_WRITES and (body.get("run_id") or body.get("run_uuid")) != only_run:
        return error("PERMISSION_DENIED", "A job's token writes only the job's own run.")
    try:
        return JsonResponse(handler(ws, body, user))
    except TrackingError as exc:
        return error(exc.code, exc.message)
