"""Registering model versions, from wherever a user's model is: a local folder or file
(uploaded), a datastore path, a job's output, an MLflow run's artifacts or an MLflow 3
logged model; and reading a version's files back. Called by the API, the pages, the
MLflow registry routes and (later) endpoints alike.

A version's files always end up in a datastore and are never changed: a datastore path
or a job's named output (already in one) is referred to where it is; files that live in
the artifact store (a run's, a logged model's, a job's ./outputs) are copied to the
default datastore's azureml/models/<name>/<version>/."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

import zipstream
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils.module_loading import import_string

from data import services as data_services
from data.spec import datastore_uri
from data.stores import File, StoreError, open_store
from jobs import outputs as job_outputs
from jobs.models import Job, Status
from registry import spec
from registry.models import Model, ModelType, RegisteredModel
from studio import assets
from studio.documents import DocumentError, load_bounded
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace
from tracking import files as tracking_files
from tracking import logged_models
from tracking.errors import TrackingError
from tracking.models import Run

MLMODEL = "MLmodel"
MAX_MLMODEL_BYTES = 1024 * 1024


@dataclass
class Found:
    """Where a registration's files are, before it is kept: a datastore location to
    refer to, or files to copy (each (path relative to the model, size, opener))."""

    location: data_services.Location | None = None
    copies: list[tuple[str, int, Any]] = field(default_factory=list)
    single_file: bool = False  # the model is one file, not a folder
    folder_name: str = "model"  # the last path component the copy gets
    job: Job | None = None
    run_id: str = ""


# -- registering -----------------------------------------------------------------------------
def create_model(
    workspace: Workspace,
    user: Any,
    data: dict[str, Any],
    upload: IO[bytes] | None = None,
    *,
    upload_is_folder: bool = False,
) -> Model:
    """Register a model version from its document (Azure's model YAML). A local path's
    content comes as `upload`: the file, or the folder as a tar archive."""
    document = spec.parse_model(data)
    version = assets.new_version(Model, workspace, document.name, document.version)
    try:
        found = find_files(workspace, document.path)
    except ValueError as exc:
        raise FieldErrors([("path", str(exc))]) from exc
    if found is None:  # a local path: its content came with the request
        if upload is None:
            raise FieldErrors(
                [
                    (
                        "path",
                        "a local path is uploaded with the model (kstudio model "
                        "create sends it); none came with this request",
                    )
                ]
            )
        name = PurePosixPath(document.path.replace("\\", "/").rstrip("/")).name or document.name
        found = Found(
            location=data_services.upload_path(
                workspace, document.datastore, name, upload, is_file=not upload_is_folder
            ),
            single_file=not upload_is_folder,
        )
    return keep(workspace, user, document, version, found)


def keep(
    workspace: Workspace, user: Any, document: spec.ModelDocument, version: str, found: Found
) -> Model:
    """Copy what must be copied, check the files against the model's type, and record
    the version (and its name, the first time)."""
    location = found.location or _copy(workspace, document.name, version, found)
    assert location.datastore is not None
    try:
        files = location.walk()
    except StoreError as exc:
        raise FieldErrors([("path", f"{location.uri}: {exc}")]) from exc
    if not files:
        raise FieldErrors([("path", f"{location.uri}: no such file or folder")])
    flavors = _check_type(document.type, location, files)
    by = user if getattr(user, "is_authenticated", False) else None
    try:
        with transaction.atomic():
            registered, _ = RegisteredModel.objects.get_or_create(
                workspace=workspace, name=document.name, defaults={"created_by": by}
            )
            model = Model.objects.create(
                workspace=workspace,
                registered=registered,
                name=document.name,
                version=version,
                type=document.type,
                path=location.uri,
                description=document.description,
                tags=document.tags,
                stage=document.stage or "None",
                size=sum(f.size for f in files),
                file_count=len(files),
                source=document.path,
                job=found.job,
                run_id=found.run_id,
                flavors=flavors,
                created_by=by,
            )
            RegisteredModel.objects.filter(pk=registered.pk).update(updated_at=model.created_at)
            for path in settings.STUDIO_MODEL_REGISTERED:  # endpoints that follow @latest
                transaction.on_commit(functools.partial(import_string(path), model))
            return model
    except IntegrityError as exc:
        raise Conflict(
            f"Model {document.name}:{version} was just made by another request."
        ) from exc


def _check_type(kind: str, location: data_services.Location, files: list[File]) -> dict[str, Any]:
    """An MLflow model is a folder with an MLmodel file (its flavors are kept); a Triton
    model is a folder (a model repository)."""
    base = location.path.strip("/")
    is_file = len(files) == 1 and files[0].path == base
    if kind == ModelType.TRITON and is_file:
        raise FieldErrors(
            [
                (
                    "path",
                    f"{location.uri} is a file; a triton_model is a folder "
                    "(a Triton model repository)",
                )
            ]
        )
    if kind != ModelType.MLFLOW:
        return {}
    mlmodel = next((f for f in files if f.path == f"{base}/{MLMODEL}".lstrip("/")), None)
    if is_file or mlmodel is None:
        raise FieldErrors(
            [
                (
                    "path",
                    f"{location.uri} has no MLmodel file; an mlflow_model is "
                    "a folder that MLflow saved (mlflow.<flavor>.save_model)",
                )
            ]
        )
    if mlmodel.size > MAX_MLMODEL_BYTES:
        raise FieldErrors([("path", "its MLmodel file is larger than 1 MiB")])
    assert location.datastore is not None
    try:
        with open_store(location.datastore).open(mlmodel.path) as f:
            described = load_bounded(f.read())
    except StoreError as exc:
        raise FieldErrors([("path", f"its MLmodel file cannot be read: {exc}")]) from exc
    except DocumentError as exc:  # not YAML, or an alias bomb
        raise FieldErrors(
            [("path", f"its MLmodel file cannot be read: {exc.errors[0][1]}")]
        ) from exc
    flavors = described.get("flavors") if isinstance(described, dict) else None
    if not isinstance(flavors, dict) or not flavors:
        raise FieldErrors([("path", "its MLmodel file names no flavors")])
    return flavors


def _copy(workspace: Workspace, name: str, version: str, found: Found) -> data_services.Location:
    """Files from the artifact store into the default datastore, where the version keeps
    them."""
    datastore = data_services.default_datastore(workspace)
    store = open_store(datastore)
    base = f"azureml/models/{name}/{version}/{found.folder_name}"
    try:
        for relative, _size, opener in found.copies:
            key = base if found.single_file else f"{base}/{relative}"
            with opener() as f:
                store.save(key, f)
    except (StoreError, OSError, job_outputs.NoSuchOutput, TrackingError) as exc:
        message = exc.message if isinstance(exc, TrackingError) else str(exc)
        raise FieldErrors([("path", f"copying the model's files failed: {message}")]) from exc
    return data_services.Location(
        uri=datastore_uri(datastore.name, base), datastore=datastore, path=base
    )


# -- where a path's files are ----------------------------------------------------------------
def find_files(workspace: Workspace, path: str) -> Found | None:
    """The files `path` names (None: a local path). ValueError in the user's words."""
    source = spec.parse_source(path)
    if isinstance(source, spec.JobOutputRef):
        return _from_job(workspace, source)
    if isinstance(source, spec.RunRef):
        return _from_run(workspace, source)
    if isinstance(source, spec.LoggedModelRef):
        try:
            model = logged_models.get(workspace, source.model_id)
        except TrackingError as exc:
            raise ValueError(exc.message) from exc
        found = _from_tree(
            tracking_files.logged_model_tree(workspace, model.model_id), "", model.name
        )
        return _with_lineage(workspace, found, model.run)
    if isinstance(source, spec.ArtifactRef):
        try:
            tree, inner = tracking_files.resolve(workspace, source.path)
        except TrackingError as exc:
            raise ValueError(exc.message) from exc
        parts = PurePosixPath(source.path).parts
        run = run_in(workspace, parts[1]) if len(parts) > 2 and parts[2] == "artifacts" else None
        return _with_lineage(workspace, _from_tree(tree, inner, _last(inner)), run)
    location = data_services.locate(workspace, path)
    if location is None:
        return None
    if location.asset is not None:
        raise ValueError("must be the model's files, not a data asset")
    if location.url:
        raise ValueError(
            "a model's files are kept in a datastore; download the file and "
            "register it from a local path"
        )
    return Found(location=location)


def _last(path: str) -> str:
    return PurePosixPath(path).name or "model"


def _from_tree(tree: tracking_files.Tree, inner: str, folder_name: str) -> Found:
    listed = tree.walk(inner, settings.STUDIO_MAX_ARCHIVE_MEMBERS)
    if not listed:
        raise ValueError(f"no artifacts at {inner or 'the root'!r}")
    single = len(listed) == 1 and listed[0][0] == inner.strip("/") and bool(inner)
    base = inner.strip("/")
    copies = [
        (p[len(base) :].lstrip("/") if base else p, size, _opener(tree, p)) for p, size in listed
    ]
    return Found(copies=copies, single_file=single, folder_name=folder_name)


def _opener(tree: tracking_files.Tree, path: str) -> Any:
    return lambda: tree.open(path)


def run_in(workspace: Workspace, run_id: str) -> Run | None:
    return Run.objects.filter(run_id=run_id, experiment__workspace=workspace).first()


def job_of(workspace: Workspace, run: Run | None) -> Job | None:
    """The job a run is (its tag names it, and the run id must be that job's)."""
    if run is None or not run.tags.get("kstudio.job"):
        return None
    job = Job.objects.filter(workspace=workspace, name=run.tags["kstudio.job"]).first()
    if job is None or job.run_id != run.run_id:
        return None
    return job


def _with_lineage(workspace: Workspace, found: Found, run: Run | None) -> Found:
    found.run_id = run.run_id if run else ""
    found.job = job_of(workspace, run)
    return found


def has_mlmodel(found: Found) -> bool:
    """Whether the files are an MLflow model (an MLmodel file at their root)."""
    if found.location is None:
        return not found.single_file and any(rel == MLMODEL for rel, _s, _o in found.copies)
    base = found.location.path.strip("/")
    try:
        listed = found.location.walk()
    except StoreError:
        return False
    return any(f.path == f"{base}/{MLMODEL}".lstrip("/") for f in listed)


def _finished(job: Job) -> None:
    if job.status != Status.COMPLETED:
        raise ValueError(
            f"job {job.name} is {job.status}; a model is registered from a job that completed"
        )


def _from_job(workspace: Workspace, ref: spec.JobOutputRef) -> Found:
    job = Job.objects.filter(workspace=workspace, name=ref.job).first()
    if job is None:
        raise ValueError(f"no job named {ref.job!r} in this workspace")
    if ref.output not in job_outputs.output_names(job):
        raise ValueError(f"job {job.name} has no output named {ref.output!r}")
    _finished(job)
    run_id = job.run_id
    destination = (job.data_outputs or {}).get(ref.output)
    if destination:  # a named output, already in its datastore: referred to where it is
        uri = destination["uri"].rstrip("/") + (f"/{ref.path}" if ref.path else "")
        location = data_services.locate(workspace, uri)
        assert location is not None
        return Found(location=location, job=job, run_id=run_id)
    found = _job_files(job, ref.output, ref.path)
    found.job, found.run_id = job, run_id
    return found


def _job_files(job: Job, output: str, path: str) -> Found:
    """Files of a job's output kept in the artifact store (./outputs), under `path`."""
    base = path.strip("/")
    entries = [
        e
        for e in job_outputs.files_of(job, output)
        if not base or e["path"] == base or e["path"].startswith(base + "/")
    ]
    if not entries:
        where = f"{base!r} in " if base else ""
        raise ValueError(f"no files at {where}output {output!r} of job {job.name}")
    single = len(entries) == 1 and entries[0]["path"] == base
    copies = [
        (e["path"][len(base) :].lstrip("/"), int(e.get("size") or 0), _job_opener(job, output, e))
        for e in entries
    ]
    return Found(copies=copies, single_file=single, folder_name=_last(base))


def _job_opener(job: Job, output: str, entry: dict[str, Any]) -> Any:
    return lambda: job_outputs.open_file(job, output, entry["path"])


def _from_run(workspace: Workspace, ref: spec.RunRef) -> Found:
    """runs:/<run>/<path>: the run's MLflow artifacts there; else the logged model of
    that name the run made (MLflow 3 keeps log_model's files with the model); else, for a
    job's run, the job's ./outputs (`runs:/<run>/outputs/model`, as on Azure)."""
    run = run_in(workspace, ref.run_id)
    if run is None:
        raise ValueError(f"no MLflow run {ref.run_id} in this workspace")
    tree = tracking_files.run_tree(run)
    if tree.walk(ref.path, settings.STUDIO_MAX_ARCHIVE_MEMBERS):
        return _with_lineage(workspace, _from_tree(tree, ref.path, _last(ref.path)), run)
    model = run.logged_models.filter(name=ref.path).order_by("-created_at").first()
    if model is not None:
        tree = tracking_files.logged_model_tree(workspace, model.model_id)
        return _with_lineage(workspace, _from_tree(tree, "", _last(ref.path)), run)
    job = job_of(workspace, run)
    if job is not None:
        _finished(job)
        found = _job_files(job, "default", ref.path.removeprefix("outputs").strip("/"))
        return _with_lineage(workspace, found, run)
    raise ValueError(f"run {ref.run_id} has no artifacts at {ref.path!r}")


# -- reading a version -----------------------------------------------------------------------
def location_of(model: Model) -> data_services.Location:
    location = data_services.locate(model.workspace, model.path)
    assert location is not None and location.datastore is not None
    return location


def files(model: Model) -> list[dict[str, Any]]:
    """Each file of the version: {"path": relative to the model, "size"}."""
    location = location_of(model)
    base = location.path.strip("/")
    found = location.walk()
    if len(found) == 1 and found[0].path == base:
        return [{"path": PurePosixPath(base).name, "size": found[0].size}]
    return [{"path": f.path[len(base) :].lstrip("/"), "size": f.size} for f in found]


def open_file(model: Model, relative: str) -> IO[bytes]:
    """One listed file (nothing else can be named). LookupError when it is not one."""
    location = location_of(model)
    base = location.path.strip("/")
    listed = {f["path"] for f in files(model)}
    if relative not in listed:
        raise LookupError(f"Model {model} has no file {relative!r}.")
    single = len(listed) == 1 and PurePosixPath(base).name == relative
    assert location.datastore is not None
    return open_store(location.datastore).open(base if single else f"{base}/{relative}")


def _chunks(store: Any, key: str) -> Iterator[bytes]:
    """A file's content, opened only when the zip reaches it (one open file at a time)."""
    with store.open(key) as f:
        while chunk := f.read(1024 * 1024):
            yield chunk


def zip_stream(model: Model) -> Iterator[bytes]:
    """The version's files as a zip under its folder's name, made while it is sent:
    memory stays flat however big the model."""
    location = location_of(model)
    assert location.datastore is not None
    store = open_store(location.datastore)
    base = location.path.strip("/")
    folder = PurePosixPath(base).name
    archive = zipstream.ZipStream(compress_type=zipfile.ZIP_DEFLATED)
    for file in location.walk():
        relative = file.path[len(base) :].lstrip("/") or folder
        name = relative if relative == folder else f"{folder}/{relative}"
        archive.add(_chunks(store, file.path), name)
    return iter(archive)


def delete_model(registered: RegisteredModel) -> None:
    """Forget a model and every version of it; Conflict while a deployment serves one."""
    try:
        registered.delete()
    except ProtectedError as exc:
        raise Conflict(
            f"A version of model {registered.name} is served by a deployment; deploy another first."
        ) from exc


def delete_version(model: Model) -> None:
    """Forget a version (its files stay where they are: a job's output, an upload).
    Conflict while a deployment serves it."""
    registered = model.registered
    try:
        model.delete()
    except ProtectedError as exc:
        raise Conflict(f"Model {model} is served by a deployment; deploy another first.") from exc
    if registered.aliases:
        registered.aliases = {a: v for a, v in registered.aliases.items() if v != model.version}
        registered.save(update_fields=["aliases", "updated_at"])
