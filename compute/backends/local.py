"""Local compute: each job is the launcher as a child process in its own directory.

The launcher runs in a session of its own, so a studio restart does not kill running
jobs; the controller re-adopts them from their state file and pid. It starts with only
the allow-listed environment (no studio setting or secret) and, when the studio runs as
root, runs the user's command as a uid of the job's own (see compute/launcher.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
from django.conf import settings

from compute import launcher
from compute.backends import artifacts

try:  # Linux; elsewhere the controller asks about local jobs instead of being told
    from inotify_simple import INotify, flags
except (ImportError, AttributeError, OSError):  # pragma: no cover - not Linux
    INotify = None
from compute.backends.base import (
    ComputeBackend,
    LaunchSpec,
    LogRecord,
    Observation,
    launcher_bounds,
    tracking_variables,
)
from compute.resources import quantity
from studio.net import free_port

# Read at most this much log per look, so one chatty job cannot starve the others.
MAX_READ = 1024 * 1024


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class LocalBackend(ComputeBackend):
    kind = "local"

    @classmethod
    def capacity(cls) -> int | None:
        """Local jobs share this host: at most STUDIO_MAX_RUNNING_JOBS at once."""
        return int(settings.STUDIO_MAX_RUNNING_JOBS)

    def __init__(self, jobs_dir: Path | None = None) -> None:
        self._jobs_dir = jobs_dir
        self._inotify: Any = None  # an inotify_simple.INotify once asked for
        self._watches: dict[int, str] = {}  # inotify watch -> job root
        self._watch_lock = threading.Lock()

    # -- instance types ------------------------------------------------------------------
    def enforcement_notes(self, requests: dict[str, Any], limits: dict[str, Any]) -> list[str]:
        notes = []
        if "memory" in limits:
            notes.append(
                f"limits.memory {limits['memory']}: enforced as the process data-size limit "
                "(RLIMIT_DATA, per process): allocations beyond it fail, but the limit is not "
                "shared across the job's processes as a cgroup's would be."
            )
        if "cpu" in limits:
            cpus = self._cpu_set(limits["cpu"])
            if cpus is None:
                notes.append(
                    f"limits.cpu {limits['cpu']}: not enforced (host CPU affinity unavailable)."
                )
            else:
                notes.append(
                    f"limits.cpu {limits['cpu']}: enforced as CPU affinity to {len(cpus)} core(s) "
                    "(whole cores, not a time quota)."
                )
        if requests:
            notes.append(
                "requests (" + ", ".join(f"{k} {v}" for k, v in requests.items()) + "): "
                "not enforced on local compute, which does not reserve capacity."
            )
        if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
            notes.append("nvidia.com/gpu: not enforced; local jobs see whatever GPUs the host has.")
        return notes

    def _cpu_set(self, cpu_limit: Any) -> list[int] | None:
        if not hasattr(os, "sched_setaffinity"):
            return None
        cpus = available_cpus()
        wanted = max(1, math.ceil(quantity(cpu_limit)))
        return cpus[: min(wanted, len(cpus))]

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        """Read when used: a kept backend follows the setting (tests change it)."""
        return Path(self._jobs_dir or settings.STUDIO_JOBS_DIR)

    def job_uid(self, spec: LaunchSpec) -> int | None:
        """The uid the job's command runs as: its own when the studio is root."""
        base = int(settings.STUDIO_JOB_UID_BASE)
        if os.geteuid() != 0 or base <= 0:
            return None
        return base + spec.job_id

    def _make_reachable(self, root: Path) -> None:
        make_reachable(root, self.jobs_dir, "STUDIO_JOBS_DIR")

    def submit(self, spec: LaunchSpec) -> dict[str, Any]:
        root = self.jobs_dir / spec.job_key
        handle_file = root / "handle.json"
        if handle_file.exists():  # already started: same handle, nothing new runs
            return dict(json.loads(handle_file.read_text()))
        uid = self.job_uid(spec)
        if uid is not None:
            self._make_reachable(root)
        root.mkdir(parents=True, exist_ok=True)
        limits: dict[str, Any] = {}
        if "memory" in spec.limits:
            limits["memory_bytes"] = int(quantity(spec.limits["memory"]))
        if "cpu" in spec.limits:
            limits["cpus"] = self._cpu_set(spec.limits["cpu"])
        code, inputs = self._fetch_uploads(spec, root)
        launch = {
            "root": str(root),
            "name": spec.name,
            "command": spec.command,
            "code": code,
            "inputs": inputs,
            "outputs": spec.outputs,
            "environment_variables": tracking_variables(spec, settings.STUDIO_PUBLIC_URL),
            "timeout": spec.timeout,
            "limits": limits,
            "grace_seconds": spec.grace_seconds,
            "run_as": uid,
            **launcher_bounds(),
            "python": job_python(os.environ.get("PATH", os.defpath), uid is not None),
            "environment": spec.environment
            and {
                **spec.environment,
                "cache": str(settings.STUDIO_ENVIRONMENTS_DIR),
                # pip's settings (the host's package index), for building only: not the job's.
                "pip_env": {k: v for k, v in os.environ.items() if k.startswith("PIP_")},
            },
        }
        processes = int((spec.distribution or {}).get("process_count_per_instance") or 1)
        if spec.distribution and processes > 1:
            # Several processes of the one instance: its ranks meet on loopback, at a port
            # of their own (tensorflow's workers take it and the ones after it).
            launch["distribution"] = {
                "type": spec.distribution["type"],
                "hosts": ["127.0.0.1"],
                "port": free_port(),
                "process_count_per_instance": processes,
            }
        (root / "launch.json").write_text(json.dumps(launch))
        with open(root / "launcher.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, launcher.__file__, str(root / "launch.json")],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=job_environment(),
            )
        handle = {
            "root": str(root),
            "pid": process.pid,
            "create_time": psutil.Process(process.pid).create_time(),
            "uid": uid,
            "job_id": spec.job_id,
        }
        # Reap it when it exits so it does not linger as a zombie of the studio.
        _children[process.pid] = process
        handle_file.write_text(json.dumps(handle))
        return handle

    def _fetch_uploads(
        self, spec: LaunchSpec, root: Path
    ) -> tuple[str | None, dict[str, dict[str, Any]]]:
        """The job's uploads from the artifact store into its folder (the launcher's own
        copies, which the job cannot touch), as the launch file names them: a code
        archive path, and uploaded inputs as an `archive` (folders) or a `file`."""

        def local(ref: dict[str, str], key: str) -> str:
            if "path" in ref:  # a job submitted before the artifact store
                return ref["path"]
            return str(artifacts.fetch(ref["artifact"], root / "uploads" / key))

        code = local(spec.code, "code") if spec.code else None
        inputs: dict[str, dict[str, Any]] = {}
        for name, item in spec.inputs.items():
            if "artifact" in item or "path" in item:
                path = local(item, f"inputs.{name}")
                if item["type"] == "uri_folder":
                    inputs[name] = {"type": item["type"], "archive": path}
                else:
                    inputs[name] = {
                        "type": item["type"],
                        "file": path,
                        "filename": item["filename"],
                    }
            else:
                inputs[name] = item
        return code, inputs

    def _alive(self, runtime: dict[str, Any]) -> bool:
        pid = runtime.get("pid")
        if not pid:
            return False
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            _children.pop(pid, None)
            return False
        try:
            process = psutil.Process(pid)
            return (
                abs(process.create_time() - runtime["create_time"]) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def observe(self, runtime: dict[str, Any], cursor: dict[str, Any]) -> Observation:
        root = Path(runtime["root"])
        # The state first, then the log: a terminal state is written after the last line,
        # so reading in this order never ends a job before all its lines are in.
        state = _read_json(root / "state.json")
        alive = self._alive(runtime)
        offset = int(cursor.get("offset", 0))
        lines: list[LogRecord] = []
        try:
            with open(root / "log.jsonl", "rb") as f:
                f.seek(offset)
                chunk = f.read(MAX_READ)
        except FileNotFoundError:
            chunk = b""
        end = chunk.rfind(b"\n") + 1  # only whole lines; a partial one waits for its end
        for raw in chunk[:end].splitlines():
            record = json.loads(raw)
            lines.append(LogRecord(ts=record["ts"], stream=record["stream"], line=record["line"]))
        new_cursor = {"offset": offset + end}
        more = len(chunk) == MAX_READ
        phase = state.get("phase")
        if phase in launcher.TERMINAL and more:
            phase = "Finalizing"  # not over until every line is read
        elif phase not in launcher.TERMINAL and not alive and not more:
            # Re-read: it may have finished between the two reads.
            state = _read_json(root / "state.json")
            phase = state.get("phase")
            if phase not in launcher.TERMINAL:
                self._end_orphans(runtime, state)
                return Observation(
                    lines=lines,
                    cursor=new_cursor,
                    phase="Failed",
                    exit_code=state.get("exit_code"),
                    reason="The job's process ended unexpectedly (killed, or the host restarted).",
                )
        outputs = list(state.get("outputs") or [])
        if phase in launcher.TERMINAL:
            outputs = self._publish(runtime, outputs)
        return Observation(
            lines=lines,
            cursor=new_cursor,
            phase=phase,
            exit_code=state.get("exit_code"),
            reason=str(state.get("reason") or ""),
            outputs=outputs,
        )

    def _publish(
        self, runtime: dict[str, Any], listed: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Copy the files the launcher listed into the artifact store, each opened without
        following links; a file the job removed or swapped for a link since is left out.
        (Copied while the controller waits: big outputs delay its other jobs by as long.)"""
        if "job_id" not in runtime:  # started before the artifact store: served from disk
            return listed
        published = []
        for entry in listed:
            folder = self._output_folder(runtime, str(entry["output"]))
            try:
                with artifacts.open_beneath(folder, str(entry["path"])) as f:
                    name = artifacts.output_name(runtime["job_id"], entry["output"], entry["path"])
                    published.append({**entry, "artifact": artifacts.publish(name, f)})
            except artifacts.NotBeneath:
                continue
        return published

    def _end_orphans(self, runtime: dict[str, Any], state: dict[str, Any]) -> None:
        """The launcher died (killed, out of memory) and left the command running: end it,
        as the launcher would have."""
        if runtime.get("uid") is not None:
            launcher.kill_user_processes(int(runtime["uid"]))
        elif state.get("child_pgid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(state["child_pgid"]), signal.SIGKILL)

    def cancel(self, runtime: dict[str, Any], *, force: bool = False) -> None:
        if not self._alive(runtime):
            return
        state = _read_json(Path(runtime["root"]) / "state.json")
        if force:
            for pgid in (state.get("child_pgid"), runtime["pid"]):
                if pgid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(pgid), signal.SIGKILL)
            if runtime.get("uid") is not None:
                launcher.kill_user_processes(int(runtime["uid"]))
        else:
            # The launcher forwards it to the command's process group, waits the grace
            # period, then kills.
            os.kill(runtime["pid"], signal.SIGTERM)

    # -- news: the launcher writing its log or replacing its state file ------------------
    # One inotify watch on each followed job's folder (not recursive: the job's own files
    # below it make no news), so a line is followed as soon as it is written.
    def events_fd(self) -> int | None:
        with self._watch_lock:
            if self._inotify is None:
                if INotify is None:
                    return None
                try:
                    self._inotify = INotify(nonblocking=True)
                except OSError:  # no inotify here (or out of instances): ask instead
                    return None
            return self._inotify.fileno()

    def watch(self, runtime: dict[str, Any]) -> str | None:
        if self.events_fd() is None or not runtime.get("root"):
            return None
        root = str(runtime["root"])
        with self._watch_lock:
            assert self._inotify is not None
            try:
                news = flags.MODIFY | flags.MOVED_TO | flags.CLOSE_WRITE
                self._watches[self._inotify.add_watch(root, news)] = root
            except OSError:
                return None
        return root

    def unwatch(self, runtime: dict[str, Any]) -> None:
        root = str(runtime.get("root"))
        with self._watch_lock:
            for wd, watched in list(self._watches.items()):
                if watched == root and self._inotify is not None:
                    del self._watches[wd]
                    with contextlib.suppress(OSError):
                        self._inotify.rm_watch(wd)

    def changed(self) -> set[str]:
        with self._watch_lock:
            if self._inotify is None:
                return set()
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                return set()
            return {self._watches[e.wd] for e in events if e.wd in self._watches}

    @staticmethod
    def _output_folder(runtime: dict[str, Any], output: str) -> Path:
        root = Path(runtime["root"])
        return root / "wd" / "outputs" if output == "default" else root / "outputs" / output

    def output_root(self, runtime: dict[str, Any], output: str) -> str | None:
        if not runtime.get("root"):
            return None
        path = self._output_folder(runtime, output)
        return str(path) if path.is_dir() else None


_children: dict[int, subprocess.Popen[bytes]] = {}


def reachable_by_anyone(path: str) -> bool:
    """Whether a process of any uid may run this file (every folder on the way passable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(folder.stat().st_mode & stat.S_IXOTH for folder in real.parents)
    except OSError:
        return False


def job_python(path_variable: str, isolated: bool) -> str | None:
    """The interpreter a job's `python` means: STUDIO_JOB_PYTHON, else the first python3 on
    the job's PATH that the job's uid can run (the studio's own may sit in root's home)."""
    if settings.STUDIO_JOB_PYTHON:
        return str(settings.STUDIO_JOB_PYTHON)
    for folder in path_variable.split(os.pathsep):
        candidate = os.path.join(folder, "python3")
        runnable = os.path.isfile(candidate) and os.access(candidate, os.X_OK)
        if runnable and (not isolated or reachable_by_anyone(candidate)):
            return candidate
    return None


def job_environment() -> dict[str, str]:
    """The studio's environment less everything not on the allow-list: a job sees no
    setting, credential or secret of the studio's."""
    allowed = set(settings.STUDIO_JOB_ENV_PASSTHROUGH)
    return {name: value for name, value in os.environ.items() if name in allowed}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def make_reachable(root: Path, top: Path, setting: str) -> None:
    """Folders from / down to `root` (under `top`) must let another uid pass (not list):
    those the studio makes or owns on the way are 0711, the others must already allow
    it, or the setting that moves `top` is named."""
    above = [root.parent, *root.parent.parents]
    for folder in reversed([f for f in above if not f.exists()]):
        folder.mkdir(exist_ok=True)  # side by side, another may have made it
        folder.chmod(0o711)
    for folder in (top, *[p for p in root.parents if top in p.parents]):
        folder.chmod(0o711)  # traverse only; nothing in them is readable
    for folder in top.parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{top} is under {folder}, which other users cannot pass through "
                f"(mode {stat.S_IMODE(mode):o}), and what runs there runs as uids of its "
                f"own: give it o+x or set {setting} elsewhere"
            )
