"""Model servers a runner did not start itself: those a previous runner left when the
studio was killed, adopted while they still serve (so a restart fails no request), or
stopped; and every model server of a deployment being deleted, wherever it came from."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

SERVER = "kstudio_model_server.py"  # endpoints/server.py, copied into each generation


class Adopted:
    """A model server that a previous runner started: not this process's child, so
    followed by its pid (psutil keeps it from being mistaken for a later process of the
    same pid), with the part of Popen's interface the runner uses."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                if self.process.status() != psutil.STATUS_ZOMBIE:
                    return None
            except psutil.NoSuchProcess:
                pass
            self.returncode = -1  # its exit code went to whoever reaped it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            self.process.wait(timeout)
        except psutil.TimeoutExpired as exc:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from exc
        except psutil.NoSuchProcess:
            pass
        self.returncode = -1 if self.returncode is None else self.returncode
        return self.returncode


def _server_in(pid: int, folder: Path) -> psutil.Process | None:
    """The process, when it is a model server working in `folder` (or beneath it)."""
    try:
        process = psutil.Process(pid)
        command = process.cmdline()
        cwd = Path(process.cwd())
    except (psutil.Error, OSError):
        return None
    if not any(part.endswith("/" + SERVER) for part in command):
        return None
    if cwd != folder and folder not in cwd.parents:
        return None
    return process


def adoptable(instances: list[dict[str, Any]], folder: Path) -> list[Adopted] | None:
    """The recorded instances, each still a live model server of this generation's
    folder; None when any is not (then the generation starts anew)."""
    found = []
    for instance in instances:
        pid = instance.get("pid")
        process = _server_in(pid, folder) if isinstance(pid, int) else None
        if process is None:
            return None
        found.append(Adopted(process))
    return found or None


def stop_orphans(instances: list[dict[str, Any]]) -> None:
    """Model servers a previous runner left (the studio was killed before it could stop
    them): stopped before their deployment starts again, so none keeps its memory and
    port for ever. Only processes that are this model server, by their command line."""
    for instance in instances:
        pid = instance.get("pid")
        if not isinstance(pid, int):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
        except OSError:
            continue  # gone already
        if any(part.endswith(b"/" + SERVER.encode()) for part in command):
            log.info("stopping model server %d left by an earlier runner", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def stop_every_server_in(folder: Path) -> int:
    """Every model server working in a deployment's folder, of any generation and any
    runner (a failed update's predecessor, one a killed studio left): killed, with its
    process group. How many there were."""
    stopped = 0
    for process in psutil.process_iter():
        if _server_in(process.pid, folder) is None:
            continue
        log.info("stopping model server %d of %s", process.pid, folder)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        stopped += 1
    return stopped
