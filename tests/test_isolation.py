"""A local job cannot read the studio's secrets, change its data, forge its own records,
outlive its end, or serve files from outside its output folders."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.files.storage import storages
from django.test import Client

from jobs import services
from tests.conftest import await_until, token_for
from tests.test_controller import finished, lines_of, reload, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db_thread")]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only under root")


@pytest.fixture
async def controller(people):
    from tests.test_controller import running

    async with running() as c:
        yield c


async def test_a_job_sees_none_of_the_studios_environment(
    workspace, people, controller, monkeypatch
):
    monkeypatch.setenv("STUDIO_ADMIN_PASSWORD", "hunter2-admin")
    monkeypatch.setenv("DATABASE_URL", "postgres://studio:db-password@db/studio")
    text = "command: env\nenvironment_variables: {MY_SETTING: mine}\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    env = dict(line.split("=", 1) for line in await lines_of(job) if "=" in line)
    assert env["MY_SETTING"] == "mine"
    assert "PATH" in env
    assert not {"STUDIO_ADMIN_PASSWORD", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"} & set(env)
    assert not any("hunter2" in value or "db-password" in value for value in env.values())
    assert Path(env["HOME"]).parent == Path(env["TMPDIR"]).parent  # the job's own folders


@as_root
async def test_a_job_cannot_read_or_change_the_studios_data(workspace, people, controller):
    secret = django_settings.VAR_DIR / "secret_key"
    uploads = Path(storages["artifacts"].location)  # other jobs' code and data
    uploads.mkdir(parents=True, exist_ok=True)
    text = (
        f"command: id -u; cat {secret} || echo no-secret; ls {uploads} || echo no-uploads;"
        f" touch {django_settings.VAR_DIR}/planted || echo no-write\n"
    )
    job = await finished(await submit(workspace, people.contributor, text))
    lines = await lines_of(job)
    assert lines[0] == str(django_settings.STUDIO_JOB_UID_BASE + job.pk)
    assert {"no-secret", "no-uploads", "no-write"} <= set(lines)
    assert secret.read_text().strip() not in "\n".join(lines)
    assert not (django_settings.VAR_DIR / "planted").exists()


@as_root
async def test_a_job_cannot_forge_its_state_to_escape_cancel(workspace, people, controller):
    text = (
        "command: |-\n"
        '  echo \'{"phase": "Completed"}\' > ../state.json || echo refused\n'
        '  echo \'{"ts": 1, "stream": "stdout", "line": "forged"}\' >> ../log.jsonl'
        " || echo refused\n"
        "  echo waiting; sleep 120\n"
    )
    job = await submit(workspace, people.contributor, text)

    async def waiting():
        return "waiting" in await lines_of(job) and (await reload(job)).status == "Running"

    await await_until(waiting, what="the job to try, and to be running still")
    await sync_to_async(services.cancel)(await reload(job))
    job = await finished(job, timeout=20)
    assert job.status == "Canceled"
    lines = await lines_of(job)
    assert lines.count("refused") == 2
    assert "forged" not in lines


def processes_of(uid: int) -> list[psutil.Process]:
    """Live processes of a uid (a killed one may linger as a zombie until init reaps it)."""
    return [
        p
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


@as_root
async def test_nothing_a_job_started_outlives_it(workspace, people, controller):
    """Even a process that left the job's group (setsid) ends with the job."""
    text = "command: setsid sleep 300 & sleep 0.2; echo detached\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    uid = django_settings.STUDIO_JOB_UID_BASE + job.pk
    await await_until(
        sync_to_async(lambda: not processes_of(uid)), timeout=10, what="strays to end"
    )


@as_root
async def test_cancel_ends_processes_that_left_the_group(workspace, people, controller):
    text = "command: setsid sleep 300 & echo started; sleep 300\n"
    job = await submit(workspace, people.contributor, text)

    async def started():
        return await lines_of(job) == ["started"]

    await await_until(started, what="the job to start")
    uid = django_settings.STUDIO_JOB_UID_BASE + job.pk
    assert len(processes_of(uid)) >= 2
    await sync_to_async(services.cancel)(await reload(job))
    job = await finished(job, timeout=20)
    assert job.status == "Canceled"
    assert not processes_of(uid)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


LINKS = (
    "command: >-\n"
    "  echo real > outputs/real.txt && mkdir outputs/sub && echo deep > outputs/sub/deep.txt &&"
    " ln -s /etc/passwd outputs/passwd && ln -s /proc/self/environ outputs/environ &&"
    " ln -s .. outputs/up && ln -s /etc outputs/sub/etc && mkfifo outputs/fifo\n"
)


async def test_outputs_never_follow_links_out_of_the_folder(workspace, people, controller):
    job = await finished(await submit(workspace, people.contributor, LINKS))
    assert job.status == "Completed", job.failure_reason
    assert [(f["output"], f["path"]) for f in job.outputs] == [
        ("default", "real.txt"),
        ("default", "sub/deep.txt"),
    ]
    client = await sync_to_async(logged_in)(people.reader)
    base = f"/workspaces/{workspace.name}/jobs/{job.name}/outputs/default/"
    response = await sync_to_async(client.get)(base)
    assert response.status_code == 200
    assert response.streaming
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert sorted(archive.namelist()) == ["real.txt", "sub/deep.txt"]
        assert archive.read("sub/deep.txt") == b"deep\n"
    response = await sync_to_async(client.get)(base + "sub/deep.txt")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"deep\n"
    for path in ("passwd", "environ", "up/state.json", "sub/etc/passwd", "fifo", "../log.jsonl"):
        response = await sync_to_async(client.get)(base + path)
        assert response.status_code == 404, path


async def test_single_output_file_through_the_api(workspace, people, controller):
    text = "command: echo hi > outputs/a.txt\n"
    job = await finished(await submit(workspace, people.contributor, text))
    token = await sync_to_async(token_for)(people.reader)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    url = f"/api/v1/workspaces/{workspace.name}/jobs/{job.name}/outputs/default/a.txt"
    response = await sync_to_async(client.get)(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"hi\n"
    assert "a.txt" in response["Content-Disposition"]
    missing = await sync_to_async(client.get)(url.replace("a.txt", "b.txt"))
    assert missing.status_code == 404


async def test_no_download_offered_without_outputs(workspace, people, controller):
    job = await finished(await submit(workspace, people.contributor, "command: echo none\n"))
    client = await sync_to_async(logged_in)(people.reader)
    page = await sync_to_async(client.get)(f"/workspaces/{workspace.name}/jobs/{job.name}/")
    assert b"The job wrote no outputs." in page.content
    assert b"Download all" not in page.content


async def test_a_job_log_stops_at_its_cap_with_a_note(workspace, people, controller, settings):
    settings.STUDIO_MAX_LOG_BYTES = 2000
    text = "command: for i in $(seq 1 200); do echo line-$i; done; echo done > outputs/x\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    lines = await lines_of(job)
    assert lines[0] == "line-1"
    assert 10 < len(lines) < 60
    assert lines[-1].startswith("[kstudio] This job's log reached its limit (2,000 bytes)")
    assert [f["path"] for f in job.outputs] == ["x"]  # the job itself ran to its end


def test_job_folders_move_out_of_a_private_home_under_root(tmp_path, monkeypatch):
    """A root studio in /root/kubestudio (or a 0750 home) would give jobs folders their uid
    cannot reach: they go under /var/lib/kstudio instead, one folder per studio."""
    from studio.settings import jobs_dir

    monkeypatch.delenv("STUDIO_JOBS_DIR", raising=False)
    home = tmp_path / "home"
    var = home / "checkout" / "var"
    var.mkdir(parents=True)
    (home / "checkout").chmod(0o755)  # the studio's own umask made it private
    home.chmod(0o700)
    try:
        moved = jobs_dir(var, euid=0)
        assert moved.parts[:4] == ("/", "var", "lib", "kstudio") and moved.name == "jobs"
        assert jobs_dir(var, euid=0) == moved  # the same studio, the same folder
        (tmp_path / "other" / "var").mkdir(parents=True)
        assert jobs_dir(tmp_path / "other" / "var", euid=0) != moved
        assert jobs_dir(var, euid=1000) == var / "jobs"  # jobs run as the studio's user
        home.chmod(0o711)
        assert jobs_dir(var, euid=0) == var / "jobs"
    finally:
        home.chmod(0o755)
