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
from jobs.models import Job

CHUNK = artifacts.CHUNK


class NoSuchOutput(LookupError):
    """No such output or file (or not a regular file): the caller answers 404."""


def output_names(job: Job) -> list[str]:
    return ["default", *job.spec.get("outputs", {}).keys()]


def files_of(job: Job, output: str) -> list[dict[str, Any]]:
    """The files the job left in one output, as its compute published them at the end."""
    return [f for f in job.outputs or [] if f.get("output") == output]


def _open(job: Job, entry: dict[str, Any]) -> BinaryIO:
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
