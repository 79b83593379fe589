"""A job's outputs as the studio serves them: one file, or one output as a streamed zip.

The folders belong to the job, which may have left links, FIFOs or device nodes in them
(`ln -s /proc/self/environ outputs/x`). Every file is opened one folder at a time from
the output's root with O_NOFOLLOW, and only regular files are served, so nothing outside
the output folder can be reached, even if the job swaps a folder for a link meanwhile.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import zipstream

from compute.backends import backend_for
from jobs.models import Job

CHUNK = 1024 * 1024
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO must not block the open


class NoSuchOutput(LookupError):
    """No such output or file (or not a regular file): the caller answers 404."""


def output_names(job: Job) -> list[str]:
    return ["default", *job.spec.get("outputs", {}).keys()]


def files_of(job: Job, output: str) -> list[dict[str, object]]:
    """The files the job left in one output, as its compute listed them at the end."""
    return [f for f in job.outputs or [] if f.get("output") == output]


def output_root(job: Job, output: str) -> Path | None:
    if output not in output_names(job):
        raise NoSuchOutput(f"Job {job.name} has no output named {output!r}.")
    if not job.runtime:
        return None
    root = backend_for(job.compute, job.compute_kind).output_root(job.runtime, output)
    return Path(root) if root else None


def _parts(relative: str) -> tuple[str, ...]:
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] == "/" or any(part in ("..", ".") for part in parts):
        raise NoSuchOutput(f"{relative!r} is not a path inside the output.")
    return parts


def open_file(job: Job, output: str, relative: str) -> BinaryIO:
    """One regular file of an output, opened without following any link."""
    root = output_root(job, output)
    if root is None:
        raise NoSuchOutput(f"Job {job.name} has no files in output {output!r}.")
    return _open_beneath(root, relative, output)


def _open_beneath(root: Path, relative: str, output: str) -> BinaryIO:
    """Open root/relative a folder at a time, never through a link; regular files only."""
    parts = _parts(relative)
    try:
        folder = os.open(root, _DIR)
    except OSError as exc:
        raise NoSuchOutput(f"No files in output {output!r}.") from exc
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], _FILE, dir_fd=folder)
    except OSError as exc:  # missing, a link (ELOOP), not a folder (ENOTDIR)
        raise NoSuchOutput(f"No file {relative!r} in output {output!r}.") from exc
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NoSuchOutput(f"{relative!r} in output {output!r} is not a regular file.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _chunks(root: Path, relative: str, output: str) -> Iterator[bytes]:
    """A file's content, opened only when the zip reaches it (few open files at a time)."""
    try:
        f = _open_beneath(root, relative, output)
    except NoSuchOutput:
        return  # gone or swapped for a link since it was listed: served empty
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _listing(root: Path) -> Iterator[str]:
    """Relative paths of the regular files under root; links are neither followed nor
    listed (os.fwalk works from folder descriptors, so a swapped folder cannot redirect it)."""
    for dirpath, dirs, files, dirfd in os.fwalk(root, follow_symlinks=False):
        dirs.sort()
        for name in sorted(files):
            try:
                info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield os.path.relpath(os.path.join(dirpath, name), root)


def zip_stream(job: Job, output: str) -> Iterator[bytes]:
    """One output's files as a zip, produced while it is sent: memory stays flat however
    big the output (an empty zip when the job wrote none)."""
    root = output_root(job, output)
    archive = zipstream.ZipStream(compress_type=zipfile.ZIP_DEFLATED)
    if root is not None and not root.is_symlink() and root.is_dir():
        for relative in _listing(root):
            archive.add(_chunks(root, relative, output), relative)
    return iter(archive)
