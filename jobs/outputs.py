"""A job's outputs as the studio serves them: one file, or one output as a streamed zip.

Each file comes from the artifact store, where the job's compute published it at the end
(opened there without following links, so a job's `ln -s /proc/self/environ outputs/x`
never gets in). Jobs that ended before the store have no `artifact` in their listing and
are read from their folder on the compute's host, in the same safe way.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import zipstream

from compute.backends import artifacts, backend_for
from data import services as data_services
from data.models import Datastore
from data.stores import Store, StoreError, open_store
from jobs.models import DataUse, Job
from studio.errors import Conflict

CHUNK = artifacts.CHUNK


class NoSuchOutput(LookupError):
    """No such output or file (or not a regular file): the caller answers 404."""


def output_names(job: Job) -> list[str]:
    return ["default", *job.spec.get("outputs", {}).keys()]


def files_of(job: Job, output: str) -> list[dict[str, Any]]:
    """The files the job left in one output, as its compute published them at the end."""
    return [f for f in job.outputs or [] if f.get("output") == output]


def _open(job: Job, entry: dict[str, Any], stores: dict[str, Store] | None = None) -> BinaryIO:
    """One listed file, wherever it is now. `stores` keeps each datastore's client for
    the next file (a zip of a delivered output reads many from the same one)."""
    if "datastore" in entry:  # delivered to its datastore (a named output)
        stores = {} if stores is None else stores
        if entry["datastore"] not in stores:
            datastore = Datastore.objects.filter(
                workspace_id=job.workspace_id, name=entry["datastore"]
            ).first()
            if datastore is None:
                raise NoSuchOutput(f"The datastore {entry['datastore']!r} is gone.")
            stores[entry["datastore"]] = open_store(datastore)
        try:
            return cast(BinaryIO, stores[entry["datastore"]].open(entry["key"]))
        except StoreError as exc:
            raise NoSuchOutput(f"The file {entry['path']!r} cannot be read: {exc}") from exc
    if entry.get("artifact"):
        try:
            return cast(BinaryIO, artifacts.store().open(entry["artifact"], "rb"))
        except (FileNotFoundError, OSError) as exc:
            raise NoSuchOutput(f"The file {entry['path']!r} is no longer kept.") from exc
    root = backend_for(job.compute, job.compute_kind).output_root(job.runtime, entry["output"])
    if root is None:
        raise NoSuchOutput(f"No files in output {entry['output']!r}.")
    try:
        return artifacts.open_beneath(Path(root), entry["path"])
    except artifacts.NotBeneath as exc:
        raise NoSuchOutput(str(exc)) from exc


def open_file(job: Job, output: str, relative: str) -> BinaryIO:
    """One file of an output, as listed at the job's end (nothing else can be named)."""
    if output not in output_names(job):
        raise NoSuchOutput(f"Job {job.name} has no output named {output!r}.")
    for entry in files_of(job, output):
        if entry["path"] == relative:
            return _open(job, entry)
    raise NoSuchOutput(f"No file {relative!r} in output {output!r}.")


def _chunks(job: Job, entry: dict[str, Any], stores: dict[str, Store]) -> Iterator[bytes]:
    """A file's content, opened only when the zip reaches it (one open file at a time)."""
    try:
        f = _open(job, entry, stores)
    except NoSuchOutput:
        return  # gone since it was listed: served empty
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def zip_stream(job: Job, output: str) -> Iterator[bytes]:
    """One output's files as a zip, produced while it is sent: memory stays flat however
    big the output (an empty zip when the job wrote none)."""
    if output not in output_names(job):
        raise NoSuchOutput(f"Job {job.name} has no output named {output!r}.")
    archive = zipstream.ZipStream(compress_type=zipfile.ZIP_DEFLATED)
    stores: dict[str, Store] = {}
    for entry in files_of(job, output):
        archive.add(_chunks(job, entry, stores), entry["path"])
    return iter(archive)


# A job property naming files that several instances wrote in parts, "<output>/<file>"
# (comma-separated): each instance i writes <file>.part-<i>, and a completed job's parts
# become that one file (a batch job's append_row output, as Azure's parallel run gives).
JOIN_PARTS = "kstudio.join_parts"
_PART = re.compile(r"^(?P<file>.+)\.part-(?P<index>\d+)$")


@dataclass
class Delivery:
    """What `deliver` does: worked out in the controller's thread (it reads the
    database), carried out in another (it only moves bytes): parts joined, then named
    outputs copied to their datastores."""

    job: Job
    listing: list[dict[str, Any]]  # as the compute published it
    # Per named output: where its files go (the path in the datastore, and its store).
    targets: dict[str, tuple[str, str, Store]] = field(default_factory=dict)
    problem: str = ""  # a destination that cannot be used
    joins: set[tuple[str, str]] = field(default_factory=set)  # (output, file)

    @property
    def needed(self) -> bool:
        return bool(self.targets or self.joins or self.problem)


def plan_delivery(job: Job, listing: list[dict[str, Any]], completed: bool = True) -> Delivery:
    """What becomes of the job's outputs at its end, read now: files written in parts
    joined (when it completed), named outputs sent where `job.data_outputs` says."""
    delivery = Delivery(job, listing)
    if completed:
        for named in str((job.spec.get("properties") or {}).get(JOIN_PARTS, "")).split(","):
            output, _, name = named.strip().partition("/")
            if name:
                delivery.joins.add((output, name))
    for output, destination in (job.data_outputs or {}).items():
        try:
            location = data_services.locate(job.workspace, destination["uri"])
        except ValueError as exc:
            delivery.problem = f"Delivering output {output!r} to {destination['uri']} failed: {exc}"
            break
        assert location is not None and location.datastore is not None
        store = open_store(location.datastore)
        delivery.targets[output] = (location.datastore.name, location.path.strip("/"), store)
    return delivery


def deliver(delivery: Delivery) -> tuple[list[dict[str, Any]], str, list[str]]:
    """Copy each named output's files from the artifact store to its datastore path,
    streaming; returns the listing with where each file is now, a problem in words ('' when
    none), and the artifacts now kept elsewhere (to drop once the job's end is recorded:
    a file is kept once, where the user said). No database here."""
    delivered: list[dict[str, Any]] = []
    problem, moved = delivery.problem, []
    listing = delivery.listing
    for output, name in sorted(delivery.joins):
        listing = _join(delivery.job, listing, output, name)
    for entry in listing:
        target = delivery.targets.get(str(entry.get("output")))
        if target is None or problem or not entry.get("artifact"):
            delivered.append(entry)
            continue
        datastore, base, store = target
        key = f"{base}/{entry['path']}".lstrip("/")
        try:
            with _open(delivery.job, entry) as f:
                store.save(key, f)
        except (StoreError, NoSuchOutput) as exc:
            uri = delivery.job.data_outputs[str(entry["output"])]["uri"]
            problem = f"Delivering output {entry['output']!r} to {uri} failed: {exc}"
            delivered.append(entry)
            continue
        moved.append(str(entry["artifact"]))
        rest = {k: v for k, v in entry.items() if k != "artifact"}
        delivered.append({**rest, "datastore": datastore, "key": key})
    return delivered, problem, moved


def _join(job: Job, listing: list[dict[str, Any]], output: str, name: str) -> list[dict[str, Any]]:
    """The parts of output/name (name.part-0, name.part-1, ...) as one file in the
    artifact store, in the parts' order, streamed through a temporary file."""
    parts: list[tuple[int, dict[str, Any]]] = []
    for entry in listing:
        found = _PART.match(str(entry["path"])) if entry.get("output") == output else None
        if found and found["file"] == name and entry.get("artifact"):
            parts.append((int(found["index"]), entry))
    if not parts:
        return listing
    parts.sort(key=lambda part: part[0])
    with tempfile.NamedTemporaryFile() as joined:
        for _index, entry in parts:
            with _open(job, entry) as f:
                shutil.copyfileobj(f, joined, CHUNK)
        size = joined.tell()
        joined.seek(0)
        artifact = artifacts.publish(artifacts.output_name(job.pk, output, name), joined)
    for _index, entry in parts:
        artifacts.store().delete(entry["artifact"])
    kept = [entry for entry in listing if all(entry is not part for _, part in parts)]
    whole = {"output": output, "path": name, "size": size, "artifact": artifact}
    return sorted([*kept, whole], key=lambda entry: (str(entry["output"]), str(entry["path"])))


def forget(artifact_names: list[str]) -> None:
    """Drop artifacts whose files now live in their datastore."""
    for name in artifact_names:
        artifacts.store().delete(name)


def register(job: Job) -> str:
    """On completion: each output with a `name` becomes a data asset version, and the
    lineage says this job made it. Returns a problem in words ('' when none)."""
    for output, destination in (job.data_outputs or {}).items():
        if not destination.get("name"):
            continue
        try:
            asset = data_services.register_output(
                job.workspace, job.created_by, destination["name"], destination["version"],
                destination["uri"], f"Output {output!r} of job {job.name}.",
            )  # fmt: skip
        except (ValueError, StoreError, Conflict) as exc:
            return f"Registering output {output!r} as a data asset failed: {exc}"
        DataUse.objects.create(
            job=job, asset=asset, name=output, direction=DataUse.Direction.OUTPUT
        )
    return ""
