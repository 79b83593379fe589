"""Job operations, called alike by pages, the API, the controller and tests."""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from compute import services as compute_services
from compute.backends import LogRecord, backend_for
from compute.launcher import address_problem, archive_problem
from compute.models import ComputeKind, ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE
from data import services as data_services
from data.models import DataAsset
from data.services import Location
from data.spec import datastore_uri
from environments import services as environment_services
from environments.services import Resolved
from jobs import artifacts, events, names
from jobs.launch import DataProblem, launch_spec
from jobs.models import ACTIVE, TERMINAL, DataUse, Job, LogLine, Status, StatusChange
from jobs.spec import CommandJob, InlineEnvironment, SpecError, parse
from studio.documents import load_yaml
from studio.errors import Conflict
from studio.models import Workspace


class JobConflict(Conflict):
    """The job is not in a state that allows this (e.g. canceling a finished job)."""


@dataclass
class Upload:
    """A file that came with a submission: the code archive, or a local input."""

    file: Any  # a binary file object: an upload, or io.BytesIO
    filename: str


# -- submitting ------------------------------------------------------------------------------
def submit_yaml(
    workspace: Workspace, user: Any, text: str, uploads: Mapping[str, Upload] | None = None
) -> Job:
    return submit(workspace, user, load_yaml(text), uploads or {}, source_yaml=text)


@dataclass
class Checked:
    """A job that passed every check, and what the checks found out."""

    spec: CommandJob
    compute: ComputeTarget
    instance_type: InstanceType
    located: dict[str, Location]  # inputs that name data: where it is
    environment: Resolved | None  # what it runs in (None: the compute's default)

    def recorded(self) -> dict[str, Any]:
        """The job's fields that keep what was resolved at submission."""
        return {
            "data_inputs": _recorded(self.located),
            "environment_used": self.environment.record() if self.environment else {},
        }


def validate(
    workspace: Workspace, data: dict[str, Any], uploads: Mapping[str, Upload] | None = None
) -> Checked:
    """Everything `submit` checks, without storing anything. Raises SpecError.

    The workspace checks run even when the document itself has problems, so that the
    user hears of every problem at once.
    """
    errors: list[tuple[str, str]] = []
    try:
        spec: CommandJob | None = parse(data)
    except SpecError as exc:
        spec = None
        errors.extend(exc.errors)
    compute, instance_type = _check_placement(workspace, data, errors)
    located: dict[str, Location] = {}
    environment = None
    if spec is not None:
        if spec.name and Job.objects.filter(workspace=workspace, name=spec.name).exists():
            errors.append(("name", f"a job named {spec.name!r} already exists in this workspace"))
        _check_uploads(spec, uploads or {}, errors)
        located = _locate_data(workspace, spec, errors)
        _check_outputs(workspace, spec, errors)
        environment = _resolve_environment(workspace, spec, compute, errors)
    if errors:
        raise SpecError(errors)
    assert spec is not None and compute is not None and instance_type is not None
    return Checked(spec, compute, instance_type, located, environment)


OUTPUT_PATH = "must be in one of this workspace's datastores (azureml://datastores/...)"


def _check_outputs(workspace: Workspace, spec: CommandJob, errors: list[tuple[str, str]]) -> None:
    """An output's `path` is a datastore of this workspace; its `name:version` is free."""
    for name, output in spec.declared_outputs().items():
        if output is None:
            continue
        if output.path:
            try:
                where = data_services.locate(workspace, output.path)
            except ValueError as exc:
                errors.append((f"outputs.{name}.path", str(exc)))
            else:
                if where is None or where.datastore is None or where.datastore.pk is None:
                    errors.append((f"outputs.{name}.path", OUTPUT_PATH))
        if output.version is not None and not output.name:
            errors.append((f"outputs.{name}.version", "needs a name: the data asset to register"))
        elif (
            output.name
            and output.version is not None
            and DataAsset.objects.filter(
                workspace=workspace, name=output.name, version=str(output.version)
            ).exists()
        ):
            taken = f"data asset {output.name}:{output.version} already exists"
            errors.append((f"outputs.{name}.version", f"{taken}; a version never changes"))


def output_destinations(workspace: Workspace, spec: CommandJob, job_name: str) -> dict[str, Any]:
    """Where each named output's files go: its path, else the default datastore's
    azureml/<job>/<output>/ (Azure's default), and the asset it becomes, if named."""
    found: dict[str, Any] = {}
    if not spec.outputs:
        return found
    default = data_services.default_datastore(workspace).name
    for name, output in spec.declared_outputs().items():
        uri = (output.path if output else None) or datastore_uri(
            default, f"azureml/{job_name}/{name}"
        )
        found[name] = {
            "uri": uri,
            "name": output.name if output else None,
            "version": str(output.version) if output and output.version is not None else None,
        }
    return found


def _resolve_environment(
    workspace: Workspace,
    spec: CommandJob,
    compute: ComputeTarget | None,
    errors: list[tuple[str, str]],
) -> Resolved | None:
    named = spec.environment
    raw = named.model_dump(exclude_none=True) if isinstance(named, InlineEnvironment) else named
    try:
        environment = environment_services.resolve(workspace, raw)
    except SpecError as exc:
        errors.extend(exc.errors)
        return None
    if environment is not None and environment.build and compute is not None:
        if compute.kind == ComputeKind.LOCAL:
            errors.append(
                ("environment", f"{environment.label} is built from a Docker context, which "
                 "the local compute cannot do; run it on a Kubernetes compute target, or give "
                 "the environment an image (and conda_file)")
            )  # fmt: skip
        elif compute.cluster is not None and not (compute.cluster.settings or {}).get(
            "imageRegistry"
        ):
            errors.append(
                ("environment", f"{environment.label} is built from a Docker context: the "
                 f"cluster {compute.cluster.name!r} needs a registry to push it to "
                 "(kstudio cluster install NAME --set imageRegistry=...)")
            )  # fmt: skip
    return environment


def _locate_data(
    workspace: Workspace, spec: CommandJob, errors: list[tuple[str, str]]
) -> dict[str, Location]:
    """Inputs naming data assets, datastore paths or storage URLs: where each is, now (an
    `@latest` is pinned to the version it names at submission)."""
    found: dict[str, Location] = {}
    for name, item in spec.data_inputs().items():
        if not item.refers_to_data() or item.path.lower().startswith(("http://", "https://")):
            continue
        try:
            location = data_services.locate(workspace, item.path)
        except ValueError as exc:
            errors.append((f"inputs.{name}.path", str(exc)))
            continue
        assert location is not None
        asset = location.asset
        if asset is not None and (asset.type == "uri_file") != (item.type == "uri_file"):
            errors.append(
                (f"inputs.{name}.type", f"data asset {asset} is a {asset.type}; the input "
                 f"says {item.type}")
            )  # fmt: skip
        found[name] = location
    return found


def would_create(
    workspace: Workspace, data: dict[str, Any], uploads: Mapping[str, Upload] | None = None
) -> tuple[CommandJob, ComputeTarget, InstanceType, list[dict[str, Any]]]:
    """`validate`, and the objects the job's compute would create for it (a cluster's Job
    and Secret; none for local processes). Nothing is stored or created."""
    checked = validate(workspace, data, uploads)
    spec, compute, instance_type = checked.spec, checked.compute, checked.instance_type
    job = Job(
        pk=0,
        workspace=workspace,
        compute_name=compute.name,
        name=spec.name or "generated-at-submit",
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        resources={"node_selector": instance_type.node_selector, **instance_type.resources},
        uploads={key: {"artifact": "(kept at submit)", "filename": upload.filename}
                 for key, upload in (uploads or {}).items()},
        **checked.recorded(),
    )  # fmt: skip
    job.data_outputs = output_destinations(workspace, spec, job.name)
    try:
        launch = launch_spec(job)
    except DataProblem as exc:
        name = str(exc).split(":", 1)[0]
        raise SpecError([(f"{name}.path", str(exc).split(": ", 1)[-1])]) from exc
    launch.job_token = "(a token for this job alone, made when it starts)"  # noqa: S105
    if "MLFLOW_TRACKING_TOKEN" in launch.environment_variables:  # the same token
        launch.environment_variables["MLFLOW_TRACKING_TOKEN"] = launch.job_token
    return spec, compute, instance_type, backend_for(compute).render(launch)


def _check_placement(
    workspace: Workspace, data: dict[str, Any], errors: list[tuple[str, str]]
) -> tuple[ComputeTarget | None, InstanceType | None]:
    """The compute target and instance type the job asks for, read from the raw document
    so that they are checked even when other fields are wrong."""
    raw_resources = data.get("resources")
    resources: dict[str, Any] = raw_resources if isinstance(raw_resources, dict) else {}
    compute_name = data.get("compute")
    compute = _resolve_compute(
        workspace,
        compute_name.removeprefix("azureml:") if isinstance(compute_name, str) else None,
        errors,
    )
    if compute is None:
        return None, None
    if compute.problem:
        errors.append(("compute", f"{compute.name}: {compute.problem}"))
    instance_type = None
    wanted = resources.get("instance_type") or DEFAULT_INSTANCE_TYPE
    if isinstance(wanted, str):
        instance_type = compute.instance_types().filter(name=wanted).first()
        if instance_type is None:
            offered = ", ".join(compute.instance_types().values_list("name", flat=True))
            errors.append(
                (
                    "resources.instance_type",
                    f"instance type {wanted!r} is not offered on compute {compute.name!r}"
                    + (f" (available: {offered})" if offered else ""),
                )
            )
    count = resources.get("instance_count", 1)
    if compute.kind == ComputeKind.LOCAL and isinstance(count, int) and count > 1:
        errors.append(
            (
                "resources.instance_count",
                "local compute runs a single instance; instance_count must be 1 "
                "(distribution.process_count_per_instance runs several processes of it; "
                "use a Kubernetes compute for several instances)",
            )
        )
    distribution = data.get("distribution")
    kind = distribution.get("type") if isinstance(distribution, dict) else None
    if kind not in (None, "pytorch", "tensorflow", "mpi"):
        errors.append(
            ("distribution.type", f"{kind} is not supported yet (pytorch, tensorflow and mpi "
             "are)")
        )  # fmt: skip
    return compute, instance_type


def _check_uploads(
    spec: CommandJob, uploads: Mapping[str, Upload], errors: list[tuple[str, str]]
) -> None:
    """Local code and inputs come as uploads: each needed one present, none extra."""
    data_inputs = spec.data_inputs()
    if spec.code and "code" not in uploads:
        errors.append(
            (
                "code",
                "the code folder must be uploaded with the job as an archive "
                "(kstudio job create does this)",
            )
        )
    if "code" in uploads and not spec.code:
        errors.append(("code", "an archive was uploaded but the job has no code field"))
    for name, item in data_inputs.items():
        problem = _url_problem(item.path)
        if problem:
            errors.append((f"inputs.{name}.path", problem))
        if not item.refers_to_data() and f"inputs.{name}" not in uploads:
            errors.append(
                (
                    f"inputs.{name}.path",
                    "a local path must be uploaded with the job (kstudio job create does this)",
                )
            )
    for key, upload in uploads.items():
        if key == "code":
            field, is_folder = "code", True
        elif key.removeprefix("inputs.") in data_inputs and key.startswith("inputs."):
            field = f"{key}.path"
            is_folder = data_inputs[key.removeprefix("inputs.")].type != "uri_file"
        else:
            errors.append((key, "an upload was given for something the job does not declare"))
            continue
        if is_folder:
            problem = archive_problem(
                upload.file,
                settings.STUDIO_MAX_ARCHIVE_MEMBERS,
                settings.STUDIO_MAX_ARCHIVE_BYTES,
            )
            if problem:
                errors.append((field, problem))


def _url_problem(path: str) -> str | None:
    """An http(s) input whose host is an address the job may not fetch from, said at once.
    (A host name is checked by the launcher on the address it connects to.)"""
    if not path.lower().startswith(("http://", "https://")):
        return None
    host = urllib.parse.urlsplit(path).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return address_problem(host, list(settings.STUDIO_ALLOWED_INPUT_NETWORKS))


def _resolve_compute(
    workspace: Workspace, name: str | None, errors: list[tuple[str, str]]
) -> ComputeTarget | None:
    if name:
        compute = ComputeTarget.objects.filter(workspace=workspace, name=name).first()
        if compute is None:
            errors.append(
                ("compute", f"no compute target named {name!r} in workspace {workspace.name!r}")
            )
        return compute
    compute = compute_services.default_compute(workspace)
    if compute is None:
        errors.append(("compute", "the workspace has no compute target; ask IT-ops to add one"))
    return compute


def submit(
    workspace: Workspace,
    user: Any,
    data: dict[str, Any],
    uploads: Mapping[str, Upload],
    *,
    source_yaml: str = "",
) -> Job:
    """Validate and store a job, then queue it. Nothing is stored when anything is wrong."""
    checked = validate(workspace, data, uploads)
    spec, compute, instance_type = checked.spec, checked.compute, checked.instance_type
    backend = backend_for(compute)
    stored: dict[str, dict[str, str]] = {}  # upload key -> its artifact
    name = spec.name or names.generate()
    try:
        with transaction.atomic():
            job = Job.objects.create(
                workspace=workspace,
                name=name,
                display_name=spec.display_name or "",
                experiment_name=spec.experiment_name or "Default",
                description=spec.description or "",
                tags=spec.tags,
                spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                source_yaml=source_yaml,
                compute=compute,
                compute_name=compute.name,
                compute_kind=compute.kind,
                instance_type=instance_type.name,
                resources={
                    "node_selector": instance_type.node_selector,
                    **instance_type.resources,
                },
                enforcement_notes=[
                    *backend.enforcement_notes(instance_type.requests, instance_type.limits),
                    *backend.placement_warnings(instance_type),
                ],
                created_by=user if getattr(user, "is_authenticated", False) else None,
                status=Status.QUEUED,
                **checked.recorded(),
                data_outputs=output_destinations(workspace, spec, name),
            )
            DataUse.objects.bulk_create(
                DataUse(job=job, asset=where.asset, name=name, direction=DataUse.Direction.INPUT)
                for name, where in checked.located.items()
                if where.asset is not None
            )
            if uploads:
                for key, upload in uploads.items():
                    stored[key] = artifacts.save_upload(job.pk, key, upload.file, upload.filename)
                Job.objects.filter(pk=job.pk).update(uploads=stored)
                job.uploads = stored
            # Stored already Queued, with both states on record: one write fewer on the
            # hot path of every submission.
            history = StatusChange.objects.bulk_create(
                [
                    StatusChange(job=job, status=Status.NOT_STARTED, at=job.created_at),
                    StatusChange(job=job, status=Status.QUEUED, at=job.created_at),
                ]
            )
            # The response shows the history; no need to read back what was just written.
            job._prefetched_objects_cache = {"status_changes": history}  # type: ignore[attr-defined]
            events.publish(events.status_message(job), events.wake_message(job.pk))
    except IntegrityError as exc:
        artifacts.delete(stored.values())
        # Two submissions raced for the same explicit name.
        raise SpecError([("name", f"a job named {spec.name!r} already exists")]) from exc
    except BaseException:
        artifacts.delete(stored.values())
        raise
    return job


def _recorded(located: dict[str, Location]) -> dict[str, dict[str, str | None]]:
    return {
        name: {"uri": where.uri, "asset": str(where.asset) if where.asset else None}
        for name, where in located.items()
    }


# -- state changes ---------------------------------------------------------------------------
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    # Back from Preparing: a cluster took the job but has no room for it yet.
    Status.QUEUED: (Status.NOT_STARTED, Status.PREPARING),
    Status.PREPARING: (Status.QUEUED,),
    Status.RUNNING: (Status.PREPARING,),
    Status.FINALIZING: (Status.RUNNING,),
    Status.CANCEL_REQUESTED: (Status.QUEUED, Status.PREPARING, Status.RUNNING, Status.FINALIZING),
    Status.COMPLETED: (Status.FINALIZING, Status.CANCEL_REQUESTED),
    Status.FAILED: (Status.PREPARING, Status.RUNNING, Status.FINALIZING, Status.CANCEL_REQUESTED),
    Status.CANCELED: (Status.NOT_STARTED, Status.QUEUED, *ACTIVE),
}


def transition(
    job: Job, to: str, message: str = "", *, unheld: bool = False, **fields: Any
) -> bool:
    """Move the job to `to` if its current state allows it; record and announce the change.

    A conditional UPDATE, so that two actors (a user canceling, the controller finishing)
    cannot both win.
    """
    now = timezone.now()
    if to == Status.RUNNING:
        fields.setdefault("started_at", now)
    if to in TERMINAL:
        fields.setdefault("ended_at", now)
        fields.setdefault("lease_owner", "")
    with transaction.atomic():
        matching = Job.objects.filter(pk=job.pk, status__in=ALLOWED_FROM[to])
        if unheld:  # only if no controller holds it (a queued job a cluster took is held)
            matching = matching.filter(lease_owner="")
        updated = matching.update(status=to, **fields)
        if not updated:
            return False
        StatusChange.objects.create(job=job, status=to, at=now, message=message)
        job.status = to
        for key, value in fields.items():
            setattr(job, key, value)
        if to in TERMINAL:
            end = (events.job_group(job.pk), {"type": "job.end", "status": to})
            events.publish(events.status_message(job), end)
        else:
            events.publish(events.status_message(job))
    return True


def set_instances(job: Job, instances: list[dict[str, Any]]) -> None:
    """A distributed job's instances changed state: kept, and shown live."""
    Job.objects.filter(pk=job.pk).update(instances=instances)
    job.instances = instances
    events.publish(events.status_message(job))


def set_waiting_reason(job: Job, reason: str) -> None:
    """Why a queued job waits changed (the scheduler says something new): shown live."""
    Job.objects.filter(pk=job.pk).update(waiting_reason=reason)
    job.waiting_reason = reason
    events.publish(events.status_message(job))


def cancel(job: Job) -> Job:
    """Cancel a job: at once if it has not started, else ask its compute to stop it."""
    for _attempt in range(3):
        job.refresh_from_db(fields=["status", "lease_owner"])
        if job.status in TERMINAL:
            raise JobConflict(f"Job {job.name} has already ended ({job.status}).")
        if job.status == Status.CANCEL_REQUESTED:
            return job
        unheld = job.status == Status.NOT_STARTED or (
            job.status == Status.QUEUED and not job.lease_owner
        )
        if unheld:
            if transition(job, Status.CANCELED, "Canceled before it started.", unheld=True):
                return job
        elif transition(job, Status.CANCEL_REQUESTED, "Cancel requested."):
            events.publish(events.wake_message(job.pk, reason="cancel"))
            return job
        # The controller moved it meanwhile: look again.
    raise JobConflict(f"Job {job.name} changed state while canceling; try again.")


# -- logs ------------------------------------------------------------------------------------
STREAMS = ("stdout", "stderr")


def storable(line: str) -> str:
    """A line any database keeps: PostgreSQL refuses NUL in text and lone surrogates
    cannot be encoded; both become U+FFFD (or "?")."""
    line = line.replace("\x00", "\ufffd")
    return line.encode("utf-8", errors="replace").decode("utf-8")


def append_logs(job: Job, records: Iterable[LogRecord], cursor: dict[str, Any]) -> int:
    """Store new lines (seq continuing from the job's last) and send them to watchers."""
    lines = [
        LogLine(
            job=job,
            seq=job.last_seq + i,
            ts=datetime.fromtimestamp(record.ts, tz=UTC),
            stream=record.stream if record.stream in STREAMS else "stdout",
            line=storable(record.line),
        )
        for i, record in enumerate(records, start=1)
    ]
    with transaction.atomic():
        if lines:
            LogLine.objects.bulk_create(lines)
        Job.objects.filter(pk=job.pk).update(last_seq=job.last_seq + len(lines), log_cursor=cursor)
        job.last_seq += len(lines)
        job.log_cursor = cursor
        if lines:
            # Encoded once here rather than once per watching socket.
            batch = {
                "type": "log.lines",
                "first": lines[0].seq,
                "texts": [json.dumps(line.as_message()) for line in lines],
            }
            events.publish((events.job_group(job.pk), batch))
    return len(lines)


def log_text(job: Job, timestamps: bool = False, batch: int = 5000) -> Iterator[str]:
    """The whole log as text, read a batch at a time (memory stays flat however long)."""
    after = 0
    while True:
        rows = list(log_lines(job, after, batch).values_list("seq", "ts", "line"))
        for _seq, ts, line in rows:
            yield f"{ts.isoformat(timespec='milliseconds')} {line}\n" if timestamps else line + "\n"
        if len(rows) < batch:
            return
        after = rows[-1][0]


def log_lines(job: Job, after: int = 0, limit: int | None = None) -> QuerySet[LogLine]:
    lines = job.log_lines.filter(seq__gt=after).order_by("seq")
    return lines[:limit] if limit else lines


# -- load ------------------------------------------------------------------------------------
def compute_in_use(compute: ComputeTarget) -> str | None:
    """Why the compute target may not go (compute.services.delete_compute asks)."""
    unfinished = compute.jobs.filter(status__in=(Status.QUEUED, *ACTIVE))
    names = list(unfinished.order_by("created_at").values_list("name", flat=True)[:11])
    if names:
        listed = ", ".join(names[:10]) + (
            f" and {unfinished.count() - 10} more" if len(names) > 10 else ""
        )
        return f"has queued or running jobs ({listed}); cancel them or wait for them to end first"
    return None


@dataclass
class Load:
    running: int = 0
    waiting: int = 0


def load_by_placement() -> tuple[dict[int, Load], dict[str, Load]]:
    """How many jobs run and wait, per compute target (by id) and per instance type
    (by name): two grouped queries over the jobs not yet ended."""
    by_compute: dict[int, Load] = defaultdict(Load)
    by_instance_type: dict[str, Load] = defaultdict(Load)
    unfinished = Job.objects.filter(status__in=(Status.QUEUED, *ACTIVE))
    for key, table in (("compute_id", by_compute), ("instance_type", by_instance_type)):
        rows = unfinished.values(key, "status").annotate(n=Count("id")).order_by()
        for row in rows:
            load = table[row[key]]
            if row["status"] == Status.QUEUED:
                load.waiting += row["n"]
            else:
                load.running += row["n"]
    return dict(by_compute), dict(by_instance_type)
