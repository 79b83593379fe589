"""Start a real studio (the processes a user runs) in a scratch folder, for benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:54329/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:63799/5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Studio:
    url: str
    token: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [PY, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def start_controller(self) -> None:
        self.processes.append(
            subprocess.Popen(
                [PY, "manage.py", "runcontroller"],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )


def _stop_jobs_under(folder: str) -> None:
    """Jobs outlive the studio by design; the benchmark's must not outlive the benchmark."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if any(folder in part for part in process.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                os.killpg(process.pid, 9)


def _reset_postgres(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def django_in_process(mode: str, database: str) -> None:
    """Set Django up in this process on a scratch studio: SQLite in a temporary folder
    (embedded) or a fresh PostgreSQL database named `database` (server), migrated. For
    benchmarks that measure server time without HTTP."""
    os.environ.update(
        STUDIO_VAR_DIR=tempfile.mkdtemp(prefix=f"{database}-"),
        DJANGO_SETTINGS_MODULE="studio.settings",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    if mode == "server":
        os.environ["DATABASE_URL"] = _reset_postgres(database)
    else:
        os.environ.pop("DATABASE_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


@contextlib.contextmanager
def studio(mode: str = "embedded", workers: int = 1, controller: bool = True) -> Iterator[Studio]:
    """mode: embedded (SQLite, in-process controller) or server (PostgreSQL, Redis)."""
    with tempfile.TemporaryDirectory(prefix="kstudio-bench-") as var:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(
            STUDIO_VAR_DIR=var,
            STUDIO_ADMIN_PASSWORD="bench-password-1",
            # The default level: the access log (a line per request) is part of the cost.
            LOG_LEVEL="INFO",
            STUDIO_MAX_RUNNING_JOBS="64",
        )
        if mode == "server":
            env.update(
                DATABASE_URL=_reset_postgres("kstudio_bench"),
                REDIS_URL=REDIS_URL,
                STUDIO_CHANNEL_PREFIX=f"bench{os.getpid()}",
            )
        port = free_port()
        s = Studio(url=f"http://127.0.0.1:{port}", token="", env=env)
        s.manage("migrate", "--noinput")
        s.manage("seed")
        s.token = s.manage("createtoken", "admin").strip().splitlines()[-1]
        serve = [PY, "manage.py", "serve", "--port", str(port)]
        if workers > 1:
            serve += ["--workers", str(workers)]
        log = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "ab")  # noqa: SIM115
        s.processes.append(subprocess.Popen(serve, cwd=ROOT, env=env, stdout=log, stderr=log))
        if mode == "server" and controller:
            s.start_controller()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(s.url + "/login/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the studio did not start")
            time.sleep(0.1)
        try:
            yield s
        finally:
            for process in s.processes:
                process.terminate()
            for process in s.processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
            _stop_jobs_under(var)
