"""A job's outputs as the studio serves them: one file, or one output as a streamed zip.

Each file comes from the artifact store, where the job's compute published it at the end
(opened there without following links, so a job's `ln -s /proc/self/environ outputs/x`
never gets in). Jobs that ended before the store have no `artifact` in their listing and
are read from their folder on the compute's host, in the same safe way.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import zipstream

from compute.backends import artifacts, backend_for
from data import services as data_services
from data.models import Datastore
from data.services import Location
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


def _open(job: Job, entry: dict[str, Any]) -> BinaryIO:
    if "datastore" in entry:  # delivered to its datastore (a named output)
        datastore = Datastore.objects.filter(
            workspace_id=job.workspace_id, name=entry["datastore"]
        ).first()
        if datastore is None:
            raise NoSuchOutput(f"The datastore {entry['datastore']!r} is gone.")
        try:
            return cast(BinaryIO, open_store(datastore).open(entry["key"]))
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


def _chunks(job: Job, entry: dict[str, Any]) -> Iterator[bytes]:
    """A file's content, opened only when the zip reaches it (one open file at a time)."""
    try:
        f = _open(job, entry)
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
    for entry in files_of(job, output):
        archive.add(_chunks(job, entry), entry["path"])
    return iter(archive)


def deliver(job: Job, listing: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Copy each named output's files from the artifact store to its datastore path
    (`job.data_outputs`), streaming; returns the listing with where each file is now, and
    a problem in words ('' when none). A delivered file leaves the artifact store: it is
    kept once, where the user said."""
    delivered: list[dict[str, Any]] = []
    problem = ""
    stores: dict[str, tuple[Location, Store]] = {}
    for entry in listing:
        destination = (job.data_outputs or {}).get(str(entry.get("output")))
        if destination is None or problem or not entry.get("artifact"):
            delivered.append(entry)
            continue
        output = str(entry["output"])
        try:
            if output not in stores:
                location = data_services.locate(job.workspace, destination["uri"])
                assert location is not None and location.datastore is not None
                stores[output] = (location, open_store(location.datastore))
            location, store = stores[output]
            key = f"{location.path.strip('/')}/{entry['path']}".lstrip("/")
            with _open(job, entry) as f:
                store.save(key, f)
        except (ValueError, StoreError, NoSuchOutput) as exc:
            problem = f"Delivering output {output!r} to {destination['uri']} failed: {exc}"
            delivered.append(entry)
            continue
        artifacts.store().delete(entry["artifact"])
        rest = {k: v for k, v in entry.items() if k != "artifact"}
        assert location.datastore is not None
        delivered.append({**rest, "datastore": location.datastore.name, "key": key})
    return delivered, problem


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
