"""MLflow's Model Registry REST routes (`registered-models/...`, `model-versions/...`) on
the studio's one registry, so `mlflow.register_model`, `MlflowClient().search_model_versions`
and `mlflow.pyfunc.load_model("models:/name/1")` work against a workspace's tracking URI.

A version's files are served by the artifact proxy under `registry/<name>/<version>`
(STUDIO_ARTIFACT_ROOTS), read-only."""

from __future__ import annotations

from typing import IO, Any

from django.db.models import Prefetch
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from data.stores import StoreError
from registry import services, spec
from registry.models import Model, ModelType, RegisteredModel
from studio import assets
from studio.errors import Conflict, FieldErrors
from studio.models import Role, Workspace
from tracking import search
from tracking.errors import TrackingError, invalid
from tracking.rest import Handler, serve
from tracking.services import MAX_RESULTS, page_bounds, paged, pairs

STAGES = ("None", "Staging", "Production", "Archived")
MODEL_FIELDS = search.Fields({"name": "name"}, metrics=False, untagged_differs=True)
VERSION_FIELDS = search.Fields(
    {
        "name": "name",
        "version": "version",
        "run_id": "run_id",
        "source": "source",
        "source_path": "source",
        "current_stage": "stage",
    },
    metrics=False,
    untagged_differs=True,
)


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def version_json(model: Model, aliases: dict[str, str] | None = None) -> dict[str, Any]:
    named = aliases if aliases is not None else model.registered.aliases
    return {
        "name": model.name,
        "version": model.version,
        "creation_timestamp": _ms(model.created_at),
        "last_updated_timestamp": _ms(model.created_at),
        "user_id": model.created_by.get_username() if model.created_by else "",
        "current_stage": model.stage,
        "description": model.description,
        "source": model.source or model.path,
        "run_id": model.run_id,
        "status": "READY",
        "tags": [{"key": k, "value": v} for k, v in model.tags.items()],
        "aliases": sorted(a for a, v in named.items() if v == model.version),
    }


def registered_json(registered: RegisteredModel, latest: list[Model]) -> dict[str, Any]:
    return {
        "name": registered.name,
        "creation_timestamp": _ms(registered.created_at),
        "last_updated_timestamp": _ms(registered.updated_at),
        "user_id": registered.created_by.get_username() if registered.created_by else "",
        "description": registered.description,
        "latest_versions": [version_json(m, registered.aliases) for m in latest],
        "tags": [{"key": k, "value": v} for k, v in registered.tags.items()],
        "aliases": [{"alias": a, "version": v} for a, v in sorted(registered.aliases.items())],
    }


def _latest_per_stage(versions: list[Model]) -> list[Model]:
    """MLflow's latest_versions: the newest version in each stage."""
    newest: dict[str, Model] = {}
    for model in versions:
        current = newest.get(model.stage)
        if current is None or (model.created_at, model.pk) > (current.created_at, current.pk):
            newest[model.stage] = model
    return sorted(newest.values(), key=lambda m: m.pk)


# -- lookups ---------------------------------------------------------------------------------
def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not name:
        raise invalid("Missing value for required parameter 'name'.")
    return str(name)


def _registered(ws: Workspace, body: dict[str, Any]) -> RegisteredModel:
    found = RegisteredModel.objects.filter(workspace=ws, name=_name(body)).first()
    if found is None:
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={body.get('name')} not found"
        )
    return found


def _version(ws: Workspace, body: dict[str, Any]) -> Model:
    name, version = _name(body), str(body.get("version") or "")
    found = (
        Model.objects.select_related("registered", "created_by")
        .filter(workspace=ws, name=name, version=version)
        .first()
    )
    if found is None:
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"Model Version (name={name}, version={version}) not found"
        )
    return found


def _stage(value: Any) -> str:
    for stage in STAGES:
        if str(value or "").lower() == stage.lower():
            return stage
    raise invalid(
        f"Invalid Model Version stage: {value}. Value must be one of " + ", ".join(STAGES)
    )


# -- registered models -----------------------------------------------------------------------
def _create(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    name = _name(body)
    try:
        spec.parse_model({"name": name, "path": "-"})
    except FieldErrors as exc:
        raise invalid(f"Invalid model name {name!r}: {exc.errors[0][1]}") from exc
    registered, made = RegisteredModel.objects.get_or_create(
        workspace=ws,
        name=name,
        defaults={
            "description": str(body.get("description") or ""),
            "tags": pairs(body.get("tags"), "tags"),
            "created_by": user,
        },
    )
    if not made:
        raise TrackingError(
            "RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists."
        )
    return {"registered_model": registered_json(registered, [])}


def _get(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    versions = list(registered.versions.select_related("created_by"))
    return {"registered_model": registered_json(registered, _latest_per_stage(versions))}


def _update(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    if body.get("description") is not None:
        registered.description = str(body["description"])
        registered.save(update_fields=["description", "updated_at"])
    return _get(ws, body, user)


def _rename(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    _registered(ws, body)
    raise invalid(
        "A model's name never changes in this studio: jobs and endpoints refer to "
        "it by name. Register the versions under the new name instead."
    )


def _delete(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    try:
        services.delete_model(_registered(ws, body))
    except Conflict as exc:
        raise TrackingError("INVALID_STATE", str(exc)) from exc
    return {}


def _search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    found = RegisteredModel.objects.filter(workspace=ws).select_related("created_by")
    found = search.apply(found, str(body.get("filter") or ""), MODEL_FIELDS)
    found = found.order_by(
        *_order(
            body.get("order_by"),
            {"name": "name", "last_updated_timestamp": "updated_at", "timestamp": "updated_at"},
        )
    )
    offset, size = page_bounds(body.get("max_results") or 100, body.get("page_token"), MAX_RESULTS)
    found = found.prefetch_related(
        Prefetch("versions", queryset=Model.objects.select_related("created_by"))
    )
    page, token = paged(found, offset, size)
    answer: dict[str, Any] = {
        "registered_models": [
            registered_json(r, _latest_per_stage(list(r.versions.all()))) for r in page
        ]
    }
    if token:
        answer["next_page_token"] = token
    return answer


def _order(given: Any, columns: dict[str, str]) -> list[str]:
    return [*search.ordering(given, columns), "name", "-created_at", "-id"]


def _latest_versions(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    latest = _latest_per_stage(list(registered.versions.select_related("created_by")))
    stages = [_stage(s) for s in body.get("stages") or []]
    if stages:
        latest = [m for m in latest if m.stage in stages]
    return {"model_versions": [version_json(m, registered.aliases) for m in latest]}


def _set_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    registered.tags = {**registered.tags, **pairs([body], "tags")}
    registered.save(update_fields=["tags", "updated_at"])
    return {}


def _delete_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    registered.tags = {k: v for k, v in registered.tags.items() if k != body.get("key")}
    registered.save(update_fields=["tags", "updated_at"])
    return {}


def _set_alias(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    alias = str(body.get("alias") or "")
    if not alias or alias.lower() == "latest" or (alias[0] == "v" and alias[1:].isdigit()):
        raise invalid(f"Invalid alias {alias!r}: 'latest' and v<number> are reserved.")
    registered = model.registered
    registered.aliases = {**registered.aliases, alias: model.version}
    registered.save(update_fields=["aliases", "updated_at"])
    return {}


def _delete_alias(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    registered.aliases = {a: v for a, v in registered.aliases.items() if a != body.get("alias")}
    registered.save(update_fields=["aliases", "updated_at"])
    return {}


def _by_alias(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    registered = _registered(ws, body)
    version = registered.aliases.get(str(body.get("alias") or ""))
    if version is None:
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"Registered model alias {body.get('alias')} not found."
        )
    return {
        "model_version": version_json(_version(ws, {"name": registered.name, "version": version}))
    }


# -- model versions --------------------------------------------------------------------------
def _version_source(body: dict[str, Any]) -> str:
    """Where a new version's files come from: the `source`, or the logged model that
    `model_id` names when the source is not a run's (MLflow sends both for log_model).
    The one reading that both the job-token check and the registration use."""
    source = str(body.get("source") or "")
    model_id = body.get("model_id")
    return f"models:/{model_id}" if model_id and not source.startswith("runs:/") else source


def _version_create(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    """A new version from MLflow's source: a run's artifacts (mlflow-artifacts:/ or
    runs:/), a logged model (models:/m-...), or a datastore path; an MLflow model when the
    files hold an MLmodel."""
    registered = _registered(ws, body)
    source = str(body.get("source") or "")
    where = _version_source(body)
    try:
        found = services.find_files(ws, where)
    except ValueError as exc:
        raise invalid(f"Cannot register from {where!r}: {exc}") from exc
    if found is None:
        raise invalid(
            f"Cannot register from {source!r}: the studio reads runs:/, models:/, "
            "mlflow-artifacts:/ and azureml:// sources, not the client's own disk"
        )
    if body.get("run_id") and not found.run_id:
        run = services.run_in(ws, str(body["run_id"]))
        found.run_id = run.run_id if run else ""
        found.job = services.job_of(ws, run)
    kind = ModelType.MLFLOW if services.has_mlmodel(found) else ModelType.CUSTOM
    document = spec.ModelDocument.model_validate(
        {
            "name": registered.name,
            "path": source or where,
            "type": kind,
            "description": str(body.get("description") or ""),
            "tags": pairs(body.get("tags"), "tags"),
        }
    )
    version = assets.next_version(Model, ws, registered.name)
    try:
        model = services.keep(ws, user, document, version, found)
    except FieldErrors as exc:
        raise invalid(f"Cannot register from {where!r}: {exc.errors[0][1]}") from exc
    except Conflict as exc:
        raise TrackingError("RESOURCE_ALREADY_EXISTS", str(exc)) from exc
    return {"model_version": version_json(model)}


def _version_get(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    return {"model_version": version_json(_version(ws, body))}


def _version_update(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    if body.get("description") is not None:
        model.description = str(body["description"])
        model.save(update_fields=["description"])
    return {"model_version": version_json(model)}


def _version_delete(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    try:
        services.delete_version(_version(ws, body))
    except Conflict as exc:
        raise TrackingError("INVALID_STATE", str(exc)) from exc
    return {}


def _version_search(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    found = Model.objects.filter(workspace=ws).select_related("registered", "created_by")
    found = search.apply(found, str(body.get("filter") or ""), VERSION_FIELDS)
    found = found.order_by(
        *_order(
            body.get("order_by"),
            {
                "name": "name",
                "creation_timestamp": "created_at",
                "timestamp": "created_at",
                "version_number": "created_at",
            },
        )
    )
    offset, size = page_bounds(body.get("max_results") or 1000, body.get("page_token"), 200_000)
    page, token = paged(found, offset, size)
    answer: dict[str, Any] = {"model_versions": [version_json(m) for m in page]}
    if token:
        answer["next_page_token"] = token
    return answer


def _download_uri(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    return {"artifact_uri": f"mlflow-artifacts:/registry/{model.name}/{model.version}"}


def _transition(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    stage = _stage(body.get("stage"))
    model.stage = stage
    model.save(update_fields=["stage"])
    if str(body.get("archive_existing_versions")).lower() == "true" and stage in (
        "Staging",
        "Production",
    ):
        Model.objects.filter(registered=model.registered, stage=stage).exclude(pk=model.pk).update(
            stage="Archived"
        )
    return {"model_version": version_json(model)}


def _version_set_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    model.tags = {
        **model.tags,
        **pairs([{"key": body.get("key"), "value": body.get("value")}], "tags"),
    }
    model.save(update_fields=["tags"])
    return {}


def _version_delete_tag(ws: Workspace, body: dict[str, Any], user: Any) -> dict[str, Any]:
    model = _version(ws, body)
    model.tags = {k: v for k, v in model.tags.items() if k != body.get("key")}
    model.save(update_fields=["tags"])
    return {}


ENDPOINTS: dict[str, tuple[str, str, Handler]] = {
    "registered-models/create": ("POST", Role.CONTRIBUTOR, _create),
    "registered-models/get": ("GET", Role.READER, _get),
    "registered-models/update": ("PATCH", Role.CONTRIBUTOR, _update),
    "registered-models/rename": ("POST", Role.CONTRIBUTOR, _rename),
    "registered-models/delete": ("DELETE", Role.CONTRIBUTOR, _delete),
    "registered-models/search": ("GET", Role.READER, _search),
    "registered-models/get-latest-versions": ("POST", Role.READER, _latest_versions),
    "registered-models/set-tag": ("POST", Role.CONTRIBUTOR, _set_tag),
    "registered-models/delete-tag": ("DELETE", Role.CONTRIBUTOR, _delete_tag),
    "registered-models/alias": ("POST", Role.CONTRIBUTOR, _set_alias),
    "DELETE registered-models/alias": ("DELETE", Role.CONTRIBUTOR, _delete_alias),
    "GET registered-models/alias": ("GET", Role.READER, _by_alias),
    "model-versions/create": ("POST", Role.CONTRIBUTOR, _version_create),
    "model-versions/get": ("GET", Role.READER, _version_get),
    "model-versions/update": ("PATCH", Role.CONTRIBUTOR, _version_update),
    "model-versions/delete": ("DELETE", Role.CONTRIBUTOR, _version_delete),
    "model-versions/search": ("GET", Role.READER, _version_search),
    "model-versions/get-download-uri": ("GET", Role.READER, _download_uri),
    "model-versions/transition-stage": ("POST", Role.CONTRIBUTOR, _transition),
    "model-versions/set-tag": ("POST", Role.CONTRIBUTOR, _version_set_tag),
    "model-versions/delete-tag": ("DELETE", Role.CONTRIBUTOR, _version_delete_tag),
}


def _job_may(ws: Workspace, key: str, body: dict[str, Any], only_run: str) -> bool:
    """A job registers models from its own run (`mlflow.register_model`, or log_model's
    `registered_model_name`): it may name a model, and make a version of run's files."""
    if key == "registered-models/create":
        return True
    if key != "model-versions/create":
        return False
    try:
        found = services.find_files(ws, _version_source(body))
    except (ValueError, TrackingError):
        return body.get("run_id") == only_run  # the call fails on its own, clearly
    return found is not None and found.run_id == only_run


@csrf_exempt  # token authentication only: no cookie can make a request here
def endpoint(request: HttpRequest, workspace: str, name: str) -> JsonResponse:
    return serve(request, workspace, name, ENDPOINTS, _job_may)


# -- a version's files, for the artifact proxy -----------------------------------------------
class ModelTree:
    """A model version's files, read-only: `registry/<name>/<version>/<path>`."""

    def __init__(self, model: Model) -> None:
        self.model = model
        try:
            self.listed = {f["path"]: f["size"] for f in services.files(model)}
        except StoreError as exc:
            raise TrackingError("RESOURCE_DOES_NOT_EXIST", f"{model.path}: {exc}") from exc

    def writable_by(self, only_run: str) -> bool:
        return False

    def listing(self, path: str) -> list[dict[str, Any]]:
        prefix = f"{path.strip('/')}/".lstrip("/")
        if path and path in self.listed:
            return [
                {"path": path.rsplit("/", 1)[-1], "is_dir": False, "file_size": self.listed[path]}
            ]
        folders, entries = set(), []
        for name, size in sorted(self.listed.items()):
            if not name.startswith(prefix):
                continue
            head, _, rest = name[len(prefix) :].partition("/")
            if rest:
                folders.add(head)
            else:
                entries.append({"path": f"{prefix}{head}", "is_dir": False, "file_size": size})
        return [{"path": f"{prefix}{f}", "is_dir": True} for f in sorted(folders)] + entries

    def walk(self, path: str, limit: int) -> list[tuple[str, int]]:
        base = path.strip("/")
        return [
            (p, s)
            for p, s in self.listed.items()
            if not base or p == base or p.startswith(base + "/")
        ]

    def open(self, path: str) -> IO[bytes]:
        try:
            return services.open_file(self.model, path)
        except LookupError as exc:
            raise TrackingError("RESOURCE_DOES_NOT_EXIST", str(exc)) from exc

    def save(self, path: str, content: IO[bytes]) -> None:
        raise TrackingError("PERMISSION_DENIED", "A model version's files never change.")

    def delete(self, path: str) -> None:
        self.save(path, None)  # type: ignore[arg-type]


def model_tree(ws: Workspace, parts: list[str]) -> tuple[ModelTree, str]:
    if len(parts) < 2:
        raise invalid("Use registry/<model>/<version>/<path>.")
    model = _version(ws, {"name": parts[0], "version": parts[1]})
    return ModelTree(model), "/".join(parts[2:])
