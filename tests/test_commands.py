"""The long-running commands as users start them: `serve` (what `make run` ends in) and
`runcontroller` (server mode), each as a real process, stopped by a signal."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from jobs.models import Job
from jobs.services import submit_yaml
from tests.conftest import wait_until
from tests.live import free_port

ROOT = Path(__file__).resolve().parents[1]


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A long-running manage.py command, its output kept for the assertions."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def processes_in(folder: Path) -> list[int]:
    """The processes working in a folder (a deployment's instances work in theirs)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd").startswith(str(folder)):
                found.append(int(entry))
    return found


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(bool(settings.DATABASE_URL), reason="make run is the embedded mode")
def test_serve_runs_a_job_and_stops_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(STUDIO_VAR_DIR=str(tmp_path / "var"), STUDIO_ADMIN_PASSWORD="a-long-password-1")
    manage("migrate", "--noinput", env=env)
    seeded = manage("seed", env=env).stdout
    assert "Created user 'admin'" in seeded
    token = manage("createtoken", "admin", env=env).stdout.strip().splitlines()[-1]
    port = free_port()
    server = start("serve", "--port", str(port), env=env)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/login/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, what="the studio to answer")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        # The admin password is in the studio's environment, never in a job's.
        text = "command: echo served; echo pw=$STUDIO_ADMIN_PASSWORD; echo x > outputs/o\n"
        job = http.post("/api/v1/workspaces/demo/jobs/", json={"yaml": text})
        assert job.status_code == 201, job.text
        name = job.json()["name"]

        def done() -> bool:
            status = http.get(f"/api/v1/workspaces/demo/jobs/{name}/").json()["status"]
            return status in ("Completed", "Failed", "Canceled") and status

        assert wait_until(done, what="the job to end") == "Completed"
        assert http.get(f"/api/v1/workspaces/demo/jobs/{name}/logs/").text == "served\npw=\n"
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "controller embedded stopped" in output
    assert "Traceback" not in output
    # The access log: one line per request.
    assert '"POST /api/v1/workspaces/demo/jobs/ HTTP/1.1" 201' in output
    assert_private(tmp_path / "var")


def assert_private(var: Path) -> None:
    """Nothing the studio wrote is readable by others: files 0600, folders 0700, or 0711
    (pass-through) on the way to a job's own folders, which belong to the job's uid."""
    assert (var / "secret_key").stat().st_mode & 0o777 == 0o600
    assert (var / "studio.sqlite3").stat().st_mode & 0o777 == 0o600
    checked = 0
    for path in var.rglob("*"):
        info = path.lstat()
        if path.is_symlink() or info.st_uid != os.geteuid():
            continue  # the job's own files, under its own uid
        mode = info.st_mode & 0o777
        allowed = {0o700, 0o711} if path.is_dir() else {0o600}
        assert mode in allowed, f"{path} is {mode:o}"
        checked += 1
    assert checked > 10


@pytest.mark.skipif(not settings.DATABASE_URL, reason="runcontroller is the server mode")
@pytest.mark.django_db(transaction=True)
def test_runcontroller_process_runs_jobs_and_stops_on_sigterm(workspace, people, tmp_path):
    env = dict(os.environ)
    db = connection.settings_dict
    env["DATABASE_URL"] = (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env["STUDIO_VAR_DIR"] = str(tmp_path / "var")
    controller = start("runcontroller", env=env)
    try:
        job = submit_yaml(workspace, people.contributor, "command: echo from the controller\n")

        def ended() -> Job | None:
            job.refresh_from_db()
            return job if job.is_terminal else None

        assert wait_until(ended, what="the job to end").status == "Completed"
        assert list(job.log_lines.values_list("line", flat=True)) == ["from the controller"]
        running = submit_yaml(workspace, people.contributor, "command: sleep 60\n")

        def started() -> bool:
            running.refresh_from_db()
            return running.status == "Running"

        wait_until(started, what="the second job to run")
    finally:
        controller.send_signal(signal.SIGTERM)
        output, _ = controller.communicate(timeout=30)
    assert controller.returncode == 0, output
    assert "stopped" in output
    running.refresh_from_db()
    # It released its lease on the way out, so another controller adopts the job at once.
    assert running.status == "Running"
    assert running.lease_expires_at is not None
    from django.utils import timezone

    assert running.lease_expires_at <= timezone.now()
    os.killpg(running.runtime["pid"], signal.SIGKILL)


@dataclasses.dataclass
class Scratch:
    """A fresh embedded studio's settings in a test's folder (migrated, seeded), an admin
    token, and the ports `serve` and `runrouter` are to take."""

    env: dict[str, str]
    token: str
    port: int = dataclasses.field(default_factory=free_port)
    router_port: int = dataclasses.field(default_factory=free_port)

    def api(self) -> httpx.Client:
        base = f"http://127.0.0.1:{self.port}/api/v1/workspaces/demo/"
        return httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def scratch_studio(tmp_path: Path) -> Scratch:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(STUDIO_VAR_DIR=str(tmp_path / "var"), STUDIO_ADMIN_PASSWORD="a-long-password-1")
    manage("migrate", "--noinput", env=env)
    manage("seed", env=env)
    token = manage("createtoken", "admin", env=env).stdout.strip().splitlines()[-1]
    scratch = Scratch(env, token)
    env["STUDIO_INFERENCE_URL"] = f"http://127.0.0.1:{scratch.router_port}"
    return scratch


def answers(api: httpx.Client) -> bool:
    try:
        return api.get("online-endpoints/").status_code == 200
    except httpx.HTTPError:
        return False


def deploy_blue(api: httpx.Client, endpoint: str) -> str:
    """Deployment blue of a scoring script that echoes, all the endpoint's traffic, once it
    serves: the endpoint's key."""
    script = b"def init():\n    pass\n\ndef run(raw):\n    return {'got': raw}\n"
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as tar:
        info = tarfile.TarInfo("score.py")
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
    code.seek(0)
    spec = {"name": "blue", "code_configuration": {"code": ".", "scoring_script": "score.py"}}
    api.post(f"online-endpoints/{endpoint}/deployments/", params={"all_traffic": "true"},
             data={"spec": json.dumps(spec)}, files={"code": ("c.tar.gz", code)})  # fmt: skip
    wait_until(lambda: api.get(f"online-endpoints/{endpoint}/deployments/blue/").json()[
        "provisioning_state"] == "Succeeded", 60, "blue to serve")  # fmt: skip
    return str(api.post(f"online-endpoints/{endpoint}/get-credentials/").json()["primaryKey"])


@pytest.mark.skipif(bool(settings.DATABASE_URL), reason="shares the embedded mode's SQLite file")
def test_runrouter_scores_as_its_own_process_and_stops_cleanly(tmp_path):
    """`serve` runs a deployment; `runrouter`, another process on the same database,
    routes scoring requests to it with the endpoint's key, and stops on SIGTERM."""
    scratch = scratch_studio(tmp_path)
    server = start("serve", "--port", str(scratch.port), env=scratch.env)
    router = start("runrouter", "--port", str(scratch.router_port), env=scratch.env)
    try:
        api = scratch.api()
        wait_until(lambda: answers(api), 60, "the studio to answer")
        made = api.post("online-endpoints/", json={"yaml": "name: routed\n"}).json()
        assert made["scoring_uri"] == (
            f"http://127.0.0.1:{scratch.router_port}/api/v1/endpoint/routed/score"
        )
        key = deploy_blue(api, "routed")
        assert processes_in(tmp_path / "var")  # the model server, started by `serve`

        def scored() -> httpx.Response | None:
            try:
                return httpx.post(made["scoring_uri"], content=b"hello",
                                  headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            except httpx.HTTPError:
                return None

        answer = wait_until(scored, 30, "the router to answer")
        assert answer.status_code == 200 and answer.json() == {"got": "hello"}
        assert answer.headers["azureml-model-deployment"] == "blue"
        wrong = httpx.post(
            made["scoring_uri"], content=b"x", headers={"Authorization": "Bearer no"}
        )
        assert wrong.status_code == 401
    finally:
        for process in (router, server):
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=60)[0] for process in (router, server)]
    assert router.returncode == 0, outputs[0]
    assert "Traceback" not in outputs[0]
    # `serve` stopped its deployment runner, and the runner its model servers.
    assert server.returncode == 0, outputs[1][-2000:]
    assert "deployment runner stopped" in outputs[1]
    assert not processes_in(tmp_path / "var"), "a model server outlived the studio"


@pytest.mark.skipif(bool(settings.DATABASE_URL), reason="shares the embedded mode's SQLite file")
def test_a_killed_studio_started_again_adopts_its_model_servers_and_fails_no_request(tmp_path):
    """`serve` is killed (SIGKILL) while a router scores through it; started again, its
    runner adopts the model servers that still serve instead of stopping them under the
    router's feet (which cost ~30 requests a 502). Then a delete ends them all."""
    import threading

    scratch = scratch_studio(tmp_path)
    # The router logs each request: to a file, where no full pipe can stop it.
    with open(tmp_path / "router.log", "w") as router_log:
        router = subprocess.Popen([sys.executable, "manage.py", "runrouter", "--port",
                                   str(scratch.router_port)], cwd=ROOT, env=scratch.env,
                                  stdout=router_log, stderr=subprocess.STDOUT)  # fmt: skip
    server = start("serve", "--port", str(scratch.port), env=scratch.env)
    again: subprocess.Popen[str] | None = None
    api = scratch.api()
    statuses: list[int] = []
    scoring = threading.Event()
    try:
        wait_until(lambda: answers(api), 60, "the studio to answer")
        made = api.post("online-endpoints/", json={"yaml": "name: kept\n"}).json()
        key = deploy_blue(api, "kept")
        servers = processes_in(tmp_path / "var")
        assert servers

        def score() -> None:
            with httpx.Client(timeout=10) as http:
                while not scoring.is_set() and len(statuses) < 100_000:
                    try:
                        answer = http.post(made["scoring_uri"], content=b"x",
                                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
                        statuses.append(answer.status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        scorer = threading.Thread(target=score)
        scorer.start()
        wait_until(lambda: len(statuses) > 20, 30, "scoring to go")
        server.kill()  # SIGKILL: nothing is stopped on the way out
        server.wait()
        again = start("serve", "--port", str(scratch.port), env=scratch.env)
        wait_until(lambda: answers(api), 60, "the studio to answer again")
        answered_at = len(statuses)
        seen: list[str] = []
        threading.Thread(target=lambda: seen.extend(again.stdout), daemon=True).start()
        wait_until(lambda: any("adopted 1 serving instance" in line for line in seen), 60,
                   "the runner to adopt blue")  # fmt: skip
        wait_until(lambda: len(statuses) > answered_at + 200, 60, "200 more requests")
        scoring.set()
        scorer.join()
        assert set(statuses) == {200}, collections.Counter(statuses)
        assert processes_in(tmp_path / "var") == servers  # the same model server

        # A delete ends every model server of the deployment, adopted ones too.
        assert api.patch("online-endpoints/kept/", json={"traffic": {"blue": 0}}).is_success
        assert api.delete("online-endpoints/kept/deployments/blue/").status_code == 204
        wait_until(lambda: not processes_in(tmp_path / "var"), 30, "blue's servers to end")
    finally:
        scoring.set()
        for process in (router, server, again):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=60)
