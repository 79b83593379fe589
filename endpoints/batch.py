"""Batch endpoints: creating endpoints and model deployments (checked whole before
anything is kept), and invoking them: each invocation is an ordinary job, in the job list,
that runs the batch driver (batch_driver.py) over the input's files in the deployment's
environment and compute. Called by the API and the pages alike."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction

from compute import services as compute_services
from compute.models import ComputeKind, ComputeTarget
from compute.resources import DEFAULT_INSTANCE_TYPE
from endpoints import batch_spec
from endpoints.models import BatchDeployment, BatchEndpoint, BatchJob
from endpoints.services import check_code, named_model, register_inline
from environments import services as environment_services
from jobs import outputs as job_outputs
from jobs import services as job_services
from jobs.models import Job
from jobs.spec import SpecError
from registry import services as registry
from registry.models import Model
from studio.documents import DocumentError
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace
from tracking.models import Run

DRIVER = Path(__file__).with_name("batch_driver.py")
DRIVER_NAME = "_kstudio_batch.py"  # in the job's code folder, beside the user's script
SETTINGS_NAME = "_kstudio_batch.json"
SCORE = "score"  # the output Azure's batch jobs name


# -- endpoints -------------------------------------------------------------------------------
def save_endpoint(
    workspace: Workspace, user: Any, data: dict[str, Any], *, create: bool
) -> BatchEndpoint:
    document = batch_spec.parse_batch_endpoint(data)
    existing = BatchEndpoint.objects.filter(workspace=workspace, name=document.name).first()
    if create and existing is not None:
        raise FieldErrors(
            [("name", f"a batch endpoint named {document.name!r} exists (update changes it)")]
        )
    default = document.default_deployment
    if default and (existing is None or not existing.deployments.filter(name=default).exists()):
        raise FieldErrors(
            [("defaults.deployment_name", f"the endpoint has no deployment named {default!r}")]
        )
    fields = {
        "description": document.description,
        "tags": document.tags,
        "properties": document.properties,
    }
    if existing is None:
        return BatchEndpoint.objects.create(
            workspace=workspace, name=document.name, created_by=_user(user), **fields
        )
    for key, value in fields.items():
        setattr(existing, key, value)
    if default:
        existing.default_deployment = default
    existing.save()
    return existing


def _user(user: Any) -> Any:
    return user if getattr(user, "is_authenticated", False) else None


def delete_endpoint(endpoint: BatchEndpoint) -> None:
    """The endpoint and its deployments; the jobs it started stay in the job list."""
    with transaction.atomic():
        codes = [d.code for d in endpoint.deployments.all() if d.code]
        endpoint.delete()
        transaction.on_commit(lambda: _delete_files(codes))


def _delete_files(names: list[str]) -> None:
    for name in names:
        storages["artifacts"].delete(name)


# -- deployments -----------------------------------------------------------------------------
def save_deployment(
    workspace: Workspace,
    user: Any,
    data: dict[str, Any],
    *,
    code: IO[bytes] | None = None,
    model_upload: IO[bytes] | None = None,
    model_is_folder: bool = True,
    set_default: bool = False,
) -> BatchDeployment:
    """Create or update a model batch deployment. The first of an endpoint becomes its
    default, as does one created or updated with `set_default`."""
    document = batch_spec.parse_batch_deployment(data)
    endpoint = BatchEndpoint.objects.filter(
        workspace=workspace, name=document.endpoint_name
    ).first()
    if endpoint is None:
        raise FieldErrors(
            [
                (
                    "endpoint_name",
                    f"no batch endpoint named {document.endpoint_name!r} in this workspace; "
                    "create it first",
                )
            ]
        )
    errors: list[tuple[str, str]] = []
    compute = _compute(workspace, document, errors)
    model = named_model(workspace, document.model, errors)
    inline = document.model if isinstance(document.model, batch_spec.InlineModel) else None
    mlflow = (inline is not None and inline.type == "mlflow_model") or (
        model is not None and model.type == "mlflow_model"
    )
    script = document.code_configuration
    if script is None and not mlflow:
        errors.append(
            (
                "code_configuration",
                "a scoring script is needed (code and scoring_script), except for an MLflow model",
            )
        )
    if script is not None:
        if code is None:
            errors.append(
                (
                    "code_configuration.code",
                    "the code folder is uploaded with the deployment "
                    "(kstudio batch-deployment create sends it)",
                )
            )
        else:
            errors.extend(check_code(code, script.scoring_script))
    if inline is not None and model_upload is None:
        path = inline.path
        if "://" not in path and not path.startswith("azureml:"):
            errors.append(
                (
                    "model.path",
                    "the model's files are uploaded with the deployment "
                    "(kstudio batch-deployment create sends them)",
                )
            )
    try:
        environment_services.resolve(workspace, document.environment)
    except DocumentError as exc:
        errors.extend(exc.errors)
    if errors:
        raise FieldErrors(errors)
    assert compute is not None
    if inline is not None:  # registered last: nothing half-kept
        default_name = f"{document.endpoint_name}-{document.name}"
        model = register_inline(
            workspace, user, inline, default_name, model_upload, model_is_folder
        )
    assert model is not None
    existing = endpoint.deployments.filter(name=document.name).first()
    with transaction.atomic():
        deployment = existing or BatchDeployment(endpoint=endpoint, name=document.name)
        old_code = deployment.code
        deployment.document = document.model_dump(mode="json", by_alias=True, exclude_none=True)
        deployment.model = model
        deployment.compute = compute
        deployment.code = ""
        deployment.save()
        if code is not None and script is not None:
            code.seek(0)
            name = f"batch-deployments/{deployment.pk}/code.tar.gz"
            deployment.code = storages["artifacts"].save(name, File(code))
            deployment.save(update_fields=["code"])
        if old_code and old_code != deployment.code:
            transaction.on_commit(lambda: _delete_files([old_code]))
        if set_default or not endpoint.default_deployment:
            endpoint.default_deployment = deployment.name
            endpoint.save(update_fields=["default_deployment", "updated_at"])
    return deployment


def _compute(
    workspace: Workspace,
    document: batch_spec.BatchDeploymentDocument,
    errors: list[tuple[str, str]],
) -> ComputeTarget | None:
    """The compute named (the workspace's default when none), offering the instance type."""
    if document.compute:
        compute = ComputeTarget.objects.filter(workspace=workspace, name=document.compute).first()
        if compute is None:
            errors.append(("compute", f"no compute target named {document.compute!r}"))
            return None
    else:
        compute = compute_services.default_compute(workspace)
        if compute is None:
            errors.append(("compute", "the workspace has no compute target; name one"))
            return None
    resources = document.resources
    if compute.kind == ComputeKind.LOCAL and resources.instance_count > 1:
        errors.append(
            (
                "resources.instance_count",
                "local compute runs one instance; settings.max_concurrency_per_instance "
                "sets how many processes score in parallel",
            )
        )
    wanted = resources.instance_type or DEFAULT_INSTANCE_TYPE
    if not compute.instance_types().filter(name=wanted).exists():
        offered = ", ".join(compute.instance_types().values_list("name", flat=True))
        errors.append(
            (
                "resources.instance_type",
                f"{wanted!r} is not offered on compute {compute.name!r} (offered: {offered})",
            )
        )
    return compute


def delete_deployment(deployment: BatchDeployment) -> None:
    """Refused for the endpoint's default while it has others (make another the default)."""
    endpoint = deployment.endpoint
    others = endpoint.deployments.exclude(pk=deployment.pk)
    if endpoint.default_deployment == deployment.name and others.exists():
        raise Conflict(
            f"{deployment.name} is the default deployment of {endpoint.name}; make another "
            "the default first (batch-deployment update --set-default)"
        )
    with transaction.atomic():
        code = deployment.code
        deployment.delete()
        if endpoint.default_deployment == deployment.name:
            endpoint.default_deployment = ""
            endpoint.save(update_fields=["default_deployment", "updated_at"])
        if code:
            transaction.on_commit(lambda: _delete_files([code]))


# -- invoking --------------------------------------------------------------------------------
def invoke(
    endpoint: BatchEndpoint,
    user: Any,
    *,
    input: str | None = None,
    input_upload: job_services.Upload | None = None,
    input_type: str = "uri_folder",
    deployment_name: str | None = None,
    output_path: str | None = None,
    mini_batch_size: int | None = None,
    instance_count: int | None = None,
    sets: dict[str, str] | None = None,
) -> Job:
    """Start a job that scores the input with a deployment (the endpoint's default unless
    one is named); the deployment's settings, overridden for this job by the options."""
    errors: list[tuple[str, str]] = []
    name = deployment_name or endpoint.default_deployment
    deployment = endpoint.deployments.select_related("model", "compute").filter(name=name).first()
    if deployment is None:
        field = "deployment_name"
        errors.append(
            (field, f"the endpoint has no deployment named {name!r}")
            if name
            else (field, "the endpoint has no default deployment; name one or set a default")
        )
    if input_type not in ("uri_folder", "uri_file"):
        errors.append(("input_type", "use uri_folder or uri_file"))
    if (input is None) == (input_upload is None):
        errors.append(("input", "give one input: a data asset, a datastore path or a URL"))
    overrides = {**(sets or {})}
    unknown = set(overrides) - {"output_file_name"}
    errors.extend((f"set.{k}", "only output_file_name can be set here") for k in unknown)
    if errors:
        raise FieldErrors(errors)
    assert deployment is not None
    document = dict(deployment.document)
    chosen = {**document.get("settings", {}), **overrides}
    if mini_batch_size is not None:
        chosen["mini_batch_size"] = mini_batch_size
    resources = dict(document.get("resources") or {})
    if instance_count is not None:
        resources["instance_count"] = instance_count
    try:  # the overrides, checked as the deployment's own fields are
        batch_spec.BatchSettings.model_validate(chosen)
        batch_spec.BatchResources.model_validate(resources)
    except ValueError as exc:
        raise FieldErrors(_override_errors(exc)) from exc
    source = input if input is not None else input_upload.filename  # type: ignore[union-attr]
    job_document = _job_document(deployment, chosen, resources, source, input_type, output_path)
    archive = _code_archive(deployment, chosen, resources)
    uploads = {"code": job_services.Upload(archive, "code.tar.gz")}
    if input_upload is not None:
        uploads["inputs.data"] = input_upload
    with transaction.atomic():
        try:
            job = job_services.submit(endpoint.workspace, user, job_document, uploads)
        except SpecError as exc:
            raise FieldErrors([(_invoke_field(f), m) for f, m in exc.errors]) from exc
        BatchJob.objects.create(
            endpoint=endpoint, deployment=deployment, deployment_name=deployment.name, job=job
        )
    return job


def _override_errors(exc: Exception) -> list[tuple[str, str]]:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
    return [("settings", str(exc))]


# A job's fields, as the invocation's options name them.
INVOKE_FIELDS = {
    "inputs.data.path": "input",
    "inputs.data": "input",
    "outputs.score.path": "output_path",
    "resources.instance_count": "instance_count",
}


def _invoke_field(field: str) -> str:
    return INVOKE_FIELDS.get(field, field)


def _model_folder(model: Model) -> str:
    """The datastore folder that holds the model's folder (or file): AZUREML_MODEL_DIR."""
    return registry.location_of(model).uri.rstrip("/").rsplit("/", 1)[0] + "/"


def _job_document(
    deployment: BatchDeployment,
    chosen: dict[str, Any],
    resources: dict[str, Any],
    input_path: str,
    input_type: str,
    output_path: str | None,
) -> dict[str, Any]:
    document = deployment.document
    endpoint = deployment.endpoint
    output: dict[str, Any] = {"type": "uri_folder"}
    if output_path:
        output["path"] = output_path
    job: dict[str, Any] = {
        "type": "command",
        "display_name": f"{endpoint.name} / {deployment.name}",
        "experiment_name": endpoint.name,
        "description": f"Batch scoring with {endpoint.name}/{deployment.name}",
        "tags": {
            "azureml.batch_endpoint": endpoint.name,
            "azureml.batch_deployment": deployment.name,
        },
        "code": ".",
        "command": (
            f"python {DRIVER_NAME} --data ${{{{inputs.data}}}} --model ${{{{inputs.model}}}} "
            f"--output ${{{{outputs.{SCORE}}}}}"
        ),
        "inputs": {
            "data": {"type": input_type, "path": input_path},
            "model": {"type": "uri_folder", "path": _model_folder(deployment.model)},
        },
        "outputs": {SCORE: output},
        "environment_variables": dict(chosen.get("environment_variables") or {}),
        "compute": f"azureml:{deployment.compute.name}",
        "resources": {
            "instance_count": resources.get("instance_count", 1),
            "instance_type": resources.get("instance_type") or DEFAULT_INSTANCE_TYPE,
        },
    }
    if document.get("environment") is not None:
        job["environment"] = document["environment"]
    if chosen.get("output_action", "append_row") == "append_row":
        # Several instances each append to a part of the file; the studio joins them.
        name = chosen.get("output_file_name") or "predictions.csv"
        job["properties"] = {job_outputs.JOIN_PARTS: f"{SCORE}/{name}"}
    return job


def _code_archive(
    deployment: BatchDeployment, chosen: dict[str, Any], resources: dict[str, Any]
) -> IO[bytes]:
    """The deployment's code, with the driver and this invocation's settings beside it."""
    buffer = io.BytesIO()
    script = (deployment.document.get("code_configuration") or {}).get("scoring_script")
    driver_settings = {
        **chosen,
        "scoring_script": script.removeprefix("./") if script else None,
        "instance_count": resources.get("instance_count", 1),
    }
    with tarfile.open(fileobj=buffer, mode="w:gz") as out:
        if deployment.code:
            with (
                storages["artifacts"].open(deployment.code, "rb") as f,
                tarfile.open(fileobj=f) as archive,
            ):
                for member in archive.getmembers():
                    name = member.name.removeprefix("./")
                    if name in (DRIVER_NAME, SETTINGS_NAME):
                        continue
                    out.addfile(member, archive.extractfile(member) if member.isfile() else None)
        for name, content in (
            (DRIVER_NAME, DRIVER.read_bytes()),
            (SETTINGS_NAME, json.dumps(driver_settings).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            out.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def jobs_of(endpoint: BatchEndpoint, deployment: str | None = None) -> list[Job]:
    found = BatchJob.objects.filter(endpoint=endpoint).select_related("job")
    if deployment:
        found = found.filter(deployment_name=deployment)
    return [b.job for b in found]


def progress(job: Job) -> dict[str, int] | None:
    """Mini-batches done, failed and left, as the driver last logged them to the job's run
    (None before its first report)."""
    run = Run.objects.filter(run_id=job.run_id).first()
    latest = run.latest_metrics if run is not None else {}
    found = {}
    for name in ("done", "failed", "left"):
        value = latest.get(f"minibatches_{name}", {}).get("value")
        if not isinstance(value, int | float):
            return None
        found[name] = int(value)
    return found
