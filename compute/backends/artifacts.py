"""The artifact store as backends use it: `STORAGES["artifacts"]`, any Django storage
(files under var/artifacts by default, an S3-compatible or Azure blob store by setting).

What a job brings (code, uploaded inputs) is fetched from it for the job, and what a job
leaves (its outputs) is published to it, so the studio serves outputs from the store
whichever host or pod the job ran on.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from django.core.files import File
from django.core.files.storage import Storage, storages

CHUNK = 1024 * 1024
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO must not block the open


def store() -> Storage:
    return storages["artifacts"]


def fetch(name: str, destination: Path) -> Path:
    """Copy one artifact to a local file (0600, the studio's own), streaming."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with store().open(name, "rb") as source, open(destination, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)
    return destination


def output_name(job_id: int, output: str, relative: str) -> str:
    return f"jobs/{job_id}/outputs/{output}/{relative}"


def publish(name: str, content: IO[bytes]) -> str:
    """Keep one output file under `name`, replacing an earlier copy (a job's end may be
    seen twice); returns the name the store gave it."""
    if store().exists(name):
        store().delete(name)
    return store().save(name, File(content))


def published_outputs(job_id: int, output_names: list[str]) -> list[dict[str, object]]:
    """What a job published from elsewhere (a pod's launcher, over HTTP), as the store
    holds it: the listing a local backend reads from its launcher's state."""
    found: list[dict[str, object]] = []
    for output in output_names:
        top = output_name(job_id, output, "")
        pending = [""]
        while pending:
            relative = pending.pop()
            try:
                folders, files = store().listdir(top + relative)
            except FileNotFoundError:
                continue
            pending.extend(f"{relative}{folder}/" for folder in folders)
            for file in files:
                name = top + relative + file
                found.append(
                    {"output": output, "path": relative + file, "size": store().size(name),
                     "artifact": name}
                )  # fmt: skip
    return sorted(found, key=lambda entry: (str(entry["output"]), str(entry["path"])))


class NotBeneath(LookupError):
    """Missing, a link, or not a regular file: nothing to read there."""


def parts_of(relative: str) -> tuple[str, ...]:
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] == "/" or any(part in ("..", ".") for part in parts):
        raise NotBeneath(f"{relative!r} is not a path inside the folder.")
    return parts


def open_beneath(root: Path, relative: str) -> BinaryIO:
    """Open root/relative a folder at a time, never through a link; regular files only.

    The folders belong to the job, which may have left links, FIFOs or device nodes in
    them (`ln -s /proc/self/environ outputs/x`), or swap a folder for a link meanwhile:
    nothing outside root can be reached this way.
    """
    parts = parts_of(relative)
    try:
        folder = os.open(root, _DIR)
    except OSError as exc:
        raise NotBeneath(f"No folder {root}.") from exc
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], _FILE, dir_fd=folder)
    except OSError as exc:  # missing, a link (ELOOP), not a folder (ENOTDIR)
        raise NotBeneath(f"No file {relative!r}.") from exc
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotBeneath(f"{relative!r} is not a regular file.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
