"""A local deployment's model servers as processes of this host: how one starts (its
limits, the uid it runs as, an interpreter that uid may run), the environment it is
built, and its logs. endpoints.runner decides when; this module knows how."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from compute import kube as kube_client
from compute.backends.local import make_reachable
from compute.launcher import Launcher, runnable_by_anyone
from compute.models import ComputeKind
from compute.resources import quantity
from endpoints import kube
from endpoints.models import Deployment
from endpoints.processes import SERVER
from studio.errors import FieldErrors
from studio.net import free_port

LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What holds a deployment's instances on this host, as local jobs are held: its
    `resources.limits` (memory as each process's data-size limit, RLIMIT_DATA; CPUs as an
    affinity to as many whole cores), and the uid they run as (the deployment's own when
    the studio is root: its scoring script cannot read the studio's files)."""

    memory: int | None = None
    cpus: tuple[int, ...] = ()
    uid: int | None = None

    @classmethod
    def of(cls, resources: dict[str, Any], uid: int | None = None) -> Limits:
        limits = resources.get("limits") or {}
        memory = int(quantity(limits["memory"])) if limits.get("memory") else None
        cpus: tuple[int, ...] = ()
        if limits.get("cpu") and hasattr(os, "sched_setaffinity"):
            host = sorted(os.sched_getaffinity(0))
            cpus = tuple(host[: max(1, math.ceil(quantity(limits["cpu"])))])
        return cls(memory, cpus, uid)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` behind HOLD when memory or a uid is to be set: the process sets them on
        itself, as it starts (lowering its own limit needs no privilege, where setting
        another process's needs CAP_SYS_RESOURCE; no code of ours runs between fork and
        exec, which a threaded program must avoid), then it is the model server."""
        if not self.memory and self.uid is None:
            return argv
        held = json.dumps({"memory": self.memory, "uid": self.uid})
        return [sys.executable, "-I", "-S", "-c", HOLD, held, *argv]

    def apply(self, pid: int) -> None:
        """The CPUs, on a process just started; the worker processes it forks later
        inherit them."""
        if self.cpus:
            os.sched_setaffinity(pid, self.cpus)


# The studio's own interpreter, isolated (-I -S: nothing of the deployment's is read while
# it is root): the limits set, the uid taken, then the model server exec'd.
HOLD = """\
import json, os, resource, sys
held = json.loads(sys.argv[1])
if held["memory"]:
    resource.setrlimit(resource.RLIMIT_DATA, (held["memory"], held["memory"]))
if held["uid"] is not None:
    os.setgroups([])
    os.setgid(held["uid"])
    os.setuid(held["uid"])
os.execv(sys.argv[2], sys.argv[2:])
"""


def start_instance(
    python: str, env: dict[str, str], folder: Path, index: int, limits: Limits = Limits()
) -> tuple[subprocess.Popen[bytes], str]:
    """One model server on a free loopback port, its output in instance-<index>.log."""
    port = free_port()
    with open(folder / f"instance-{index}.log", "ab") as out:
        process = subprocess.Popen(
            limits.command([python, str(folder / SERVER), "--port", str(port)]),
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        limits.apply(process.pid)
    except (OSError, ValueError):
        process.kill()
        process.wait()
        raise
    return process, f"http://127.0.0.1:{port}"


def deployment_uid(deployment: Deployment) -> int | None:
    """The uid a deployment's model servers are meant to run as: its own when the studio
    is root."""
    base = int(settings.STUDIO_DEPLOYMENT_UID_BASE)
    if os.geteuid() != 0 or base <= 0:
        return None
    return base + deployment.pk


class NoIsolatedPython(Exception):
    """No interpreter the deployment's own user may run: it does not start, rather than run
    a scoring script (anyone's code) as the studio's user."""


def runnable(python: str) -> bool:
    found = shutil.which(python)
    return bool(found) and runnable_by_anyone(os.path.realpath(str(found)))


def server_python(uid: int | None) -> tuple[str, str]:
    """The interpreter a deployment's model servers run on (or build their environment
    on), and a line for its log when it is not the one configured. When they run as a uid
    of their own it must be one that uid can run: STUDIO_DEPLOYMENT_PYTHON, else the
    studio's own, else the first python3 on PATH that others may run (as jobs get);
    NoIsolatedPython when there is none."""
    chosen = str(settings.STUDIO_DEPLOYMENT_PYTHON or "")
    if uid is None:
        return chosen or sys.executable, ""
    if chosen:
        if runnable(chosen):
            return chosen, ""
        raise NoIsolatedPython(
            f"STUDIO_DEPLOYMENT_PYTHON ({chosen}) is not an interpreter the deployment's own "
            "user may run (it or a folder above it is closed to other users): its scoring "
            "script would have to run as the studio. Point it at one outside a private home "
            "folder, such as /usr/bin/python3, or give the deployment an environment."
        )
    if runnable(sys.executable):
        return sys.executable, ""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder, "python3")
        if os.path.isfile(candidate) and runnable(candidate):
            return candidate, (
                f"The studio's own Python ({sys.executable}) is closed to other users, so the "
                f"model server runs on {candidate} as the deployment's own user: give the "
                "deployment an environment (a conda_file) for the packages its script needs.\n"
            )
    raise NoIsolatedPython(
        f"no Python here that the deployment's own user may run: the studio's "
        f"({sys.executable}) is closed to other users and no python3 on PATH is open to "
        "them. Install one (apt-get install python3) or set STUDIO_DEPLOYMENT_PYTHON."
    )


def hand_over(folder: Path, uid: int) -> None:
    """The generation's folder to the deployment's uid (its code, its model's files, its
    HOME), and the way to it passable (traverse only)."""
    make_reachable(folder, Path(settings.STUDIO_DEPLOYMENTS_DIR), "STUDIO_DEPLOYMENTS_DIR")
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, uid, uid)


def record_of(folder: Path) -> Path:
    """A generation's record (its model servers' variables and interpreter)."""
    return folder.with_name(folder.name + ".json")


def log_files(root: Path, deployment: Deployment) -> list[Path]:
    """The instances' logs of the deployment's newest generation."""
    folder = root / str(deployment.pk) / str(deployment.generation)
    return sorted(folder.glob("instance-*.log"))


def build_environment(record: dict[str, Any] | None, folder: Path, base: str) -> str | None:
    """The deployment's environment as a virtual environment (the launcher's builder,
    with the jobs' cache: one build per content, under a lock), its output in the
    folder's `storage-initializer.log`; the interpreter, or None when there is nothing to
    install."""
    if not record or not record.get("key"):
        return None
    if record.get("curated") and not settings.STUDIO_LOCAL_CURATED:
        return None  # curated stand-ins: the host's Python, as for jobs
    spec = {
        "root": str(folder / "build"),
        "name": "environment",
        "python": base,  # built on it: one the model servers' uid may run
        "environment": {
            **record,
            "cache": str(settings.STUDIO_ENVIRONMENTS_DIR),
            "pip_env": {k: v for k, v in os.environ.items() if k.startswith("PIP_")},
        },
    }
    (folder / "build" / "tmp").mkdir(parents=True)
    (folder / "environment.json").write_text(json.dumps(spec))
    launcher = Launcher(str(folder / "environment.json"))
    try:
        launcher.build_environment()
    finally:
        _as_text(folder / "build" / "log.jsonl", folder / "storage-initializer.log")
    return str(launcher.spec["python"])


def _as_text(records: Path, text: Path) -> None:
    with contextlib.suppress(OSError), open(records, encoding="utf-8") as f, open(text, "a") as out:
        for record in f:
            with contextlib.suppress(ValueError):
                out.write(json.loads(record)["line"] + "\n")


def preparation_log(root: Path, deployment: Deployment) -> Path:
    """The log of the newest generation's preparation (its environment build)."""
    return root / str(deployment.pk) / str(deployment.generation) / "storage-initializer.log"


def error_of(log_file: Path) -> tuple[str, str]:
    """Azure's code and the reason, from a model server's last words."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.path.getsize(log_file) - LOG_TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("KSTUDIO_ERROR "):
            code, _, why = line.removeprefix("KSTUDIO_ERROR ").partition(": ")
            return code, why
    return "DeploymentCrashLoopBackOff", (lines[-1] if lines else "the model server exited")


def terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


CONTAINERS = ("inference-server", "storage-initializer")


def log_text(deployment: Deployment, container: str, lines: int, index: int = 0) -> str:
    """The last lines of one of a deployment's logs: the model server's (`inference-server`,
    of instance `index`) or its preparation's (`storage-initializer`: on the local compute
    the environment build, on a cluster the pod's init container). FieldErrors when the
    container or the instance does not exist."""
    if container not in CONTAINERS:
        raise FieldErrors([("container", f"use {' or '.join(CONTAINERS)}")])
    if deployment.endpoint.compute.kind == ComputeKind.KUBERNETES:
        try:
            return kube.log_tail(deployment, deployment.endpoint.compute, container, lines, index)
        except FieldErrors:
            raise
        except Exception as exc:  # the cluster is away or refuses: said, not raised
            return f"(the cluster cannot give this log now: {kube_client.in_words(exc)})\n"
    root = Path(settings.STUDIO_DEPLOYMENTS_DIR)
    if container == "storage-initializer":
        files = [preparation_log(root, deployment)]
    else:
        files = log_files(root, deployment)
    if files and not 0 <= index < len(files):
        raise FieldErrors([("instance", f"the deployment has {len(files)} instance(s)")])
    return tail(files[index], lines) if files else ""


def tail(log_file: Path, lines: int) -> str:
    """The last `lines` lines of a log, reading at most its last 4 MiB."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.path.getsize(log_file) - 4 * 1024 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])
