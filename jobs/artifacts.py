"""The artifact store: what a job brings (its code snapshot, its uploaded inputs) kept
through one Django storage, `STORAGES["artifacts"]` (files under var/artifacts by
default; any Django storage backend by setting), never as paths on the studio's host.
Backends read them back with `compute.backends.artifacts`, whichever host they run on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import IO

from django.core.files import File

from compute.backends.artifacts import store


def save_upload(job_id: int, key: str, file: IO[bytes], filename: str) -> dict[str, str]:
    """Keep one upload of a job; returns how the job refers to it."""
    file.seek(0)
    name = store().save(f"jobs/{job_id}/uploads/{key}", File(file))
    return {"artifact": name, "filename": PurePosixPath(filename).name or "file"}


def delete(refs: Iterable[dict[str, str]]) -> None:
    for ref in refs:
        store().delete(ref["artifact"])
