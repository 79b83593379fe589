"""Jobs run end to end on the local compute, through the real controller and launcher."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import os
import shutil
import signal
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from compute.backends.local import LocalBackend
from jobs import outputs, services
from jobs.controller import Controller
from jobs.models import Job
from studio.models import Workspace
from tests import stores
from tests.conftest import await_until, code_archive

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db_thread")]


@contextlib.asynccontextmanager
async def running(name: str = "test") -> AsyncIterator[Controller]:
    stop = asyncio.Event()
    controller = Controller(name=name)
    task = asyncio.create_task(controller.run(stop))
    try:
        yield controller
    finally:
        stop.set()
        await task


@pytest.fixture
async def controller(people) -> AsyncIterator[Controller]:
    async with running() as c:
        yield c


async def submit(workspace: Workspace, user, text: str, uploads=None) -> Job:
    return await sync_to_async(services.submit_yaml)(workspace, user, text, uploads)


async def reload(job: Job) -> Job:
    return await Job.objects.aget(pk=job.pk)


async def finished(job: Job, timeout: float = 30) -> Job:
    async def ended():
        fresh = await reload(job)
        return fresh if fresh.is_terminal else None

    return await await_until(ended, timeout, f"job {job.name} to end")


async def lines_of(job: Job) -> list[str]:
    return [line async for line in job.log_lines.order_by("seq").values_list("line", flat=True)]


async def history(job: Job) -> list[str]:
    return [
        s async for s in job.status_changes.order_by("at", "id").values_list("status", flat=True)
    ]


async def test_hello_world_completes_with_its_logs(workspace, people, controller):
    job = await submit(
        workspace,
        people.contributor,
        'command: echo "hello world"\nenvironment: {image: library/python:latest}\n',
    )
    job = await finished(job)
    assert job.status == "Completed", job.failure_reason
    assert job.exit_code == 0
    assert await lines_of(job) == ["hello world"]
    assert await history(job) == [
        "NotStarted",
        "Queued",
        "Preparing",
        "Running",
        "Finalizing",
        "Completed",
    ]
    assert job.started_at and job.ended_at and job.started_at <= job.ended_at


async def test_inputs_env_outputs_and_stderr(workspace, people, controller):
    text = (
        "command: |\n"
        "  echo ${{inputs.greeting}} ${{inputs.n}} $[[--opt ${{inputs.absent}}]]\n"
        '  echo "env=$MY_VAR"\n'
        "  echo oops >&2\n"
        "  echo hi > ./outputs/a.txt\n"
        "  echo model > ${{outputs.model}}/m.bin\n"
        "inputs: {greeting: hello, n: 42}\n"
        "outputs: {model: {type: uri_folder}}\n"
        "environment_variables: {MY_VAR: set}\n"
    )
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    rows = [(line.stream, line.line) async for line in job.log_lines.order_by("seq")]
    assert rows == [("stdout", "hello 42"), ("stdout", "env=set"), ("stderr", "oops")]
    assert {(o["output"], o["path"]) for o in job.outputs} == {
        ("default", "a.txt"),
        ("model", "m.bin"),
    }
    with await sync_to_async(outputs.open_file)(job, "model", "m.bin") as f:
        assert f.read() == b"model\n"


STORES = {
    "in-memory": "django.core.files.storage.InMemoryStorage",
    "s3": "storages.backends.s3.S3Storage",
    "azure": "storages.backends.azure_storage.AzureStorage",
}


@pytest.mark.parametrize("store", ["filesystem", "in-memory", "s3", "azure"])
async def test_code_inputs_and_outputs_go_through_the_artifact_store(
    workspace, people, controller, settings, store, request
):
    """Code and uploads are fetched from the artifact store and outputs published to it,
    on each kind of store (S3 and Azure blob on real servers): the outputs are served
    from the store after the job's folder is gone."""
    if store != "filesystem":
        options = {}
        if store in ("s3", "azure"):
            options = request.getfixturevalue(f"{store}_store")
        settings.STORAGES = {
            **settings.STORAGES,
            "artifacts": {"BACKEND": STORES[store], "OPTIONS": options},
        }
    code = code_archive()
    text = (
        "command: >-\n"
        "  python main.py ${{inputs.words}} &&\n"
        "  python main.py ${{inputs.words}} > ${{outputs.model}}/m.bin &&\n"
        "  mkdir -p outputs/deep && echo hi > outputs/deep/a.txt\n"
        "code: src\n"
        "inputs: {words: {type: uri_file, path: ./words.txt}}\n"
        "outputs: {model: {type: uri_folder}}\n"
    )
    uploads = {
        "code": services.Upload(code, "code.tar.gz"),
        "inputs.words": services.Upload(io.BytesIO(b"from a file\n"), "words.txt"),
    }
    job = await finished(await submit(workspace, people.contributor, text, uploads))
    assert job.status == "Completed", job.failure_reason
    assert await lines_of(job) == ["FROM A FILE"]

    shutil.rmtree(job.runtime["root"])  # the compute's copy is gone; the store's remains
    with await sync_to_async(outputs.open_file)(job, "model", "m.bin") as f:
        assert f.read() == b"FROM A FILE\n"
    zipped = b"".join(await sync_to_async(lambda: list(outputs.zip_stream(job, "default")))())
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        assert z.read("deep/a.txt") == b"hi\n"
    if store in ("s3", "azure"):
        held = stores.stored_names(store, options)
        assert f"jobs/{job.pk}/outputs/default/deep/a.txt" in held
        # A named output is delivered to its datastore (workspaceblobstore), kept once.
        assert f"jobs/{job.pk}/outputs/model/m.bin" not in held
        assert any(name.startswith(f"jobs/{job.pk}/uploads/") for name in held)


class Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `/slow/...` trickles a byte every 0.2 s."""

    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/slow/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    threading.Event().wait(0.2)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    (tmp_path / "iris.csv").write_text("sepal,petal\n1,2\n")
    requests: list[str] = []
    handler = lambda *a: type("H", (Files,), {"requests": requests})(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.requests = requests
    yield server
    server.shutdown()


def http_input_job(url: str, extra: str = "") -> str:
    inputs = f"inputs: {{iris: {{type: uri_file, path: '{url}'}}}}\n"
    return "command: cat ${{inputs.iris}}\n" + inputs + extra


async def test_http_input_is_downloaded_at_start(
    workspace, people, controller, file_server, settings
):
    settings.STUDIO_ALLOWED_INPUT_NETWORKS = ["127.0.0.0/8"]
    url = f"http://127.0.0.1:{file_server.server_port}/iris.csv"
    job = await finished(await submit(workspace, people.contributor, http_input_job(url)))
    assert job.status == "Completed", job.failure_reason
    assert await lines_of(job) == ["sepal,petal", "1,2"]


async def test_http_input_from_the_studios_own_network_is_refused(
    workspace, people, controller, file_server
):
    """A name that resolves inward is refused on the address connected to: no request
    leaves the job. (An inward address itself is refused at submit: test_bounds.)"""
    url = f"http://localhost:{file_server.server_port}/iris.csv"
    job = await finished(await submit(workspace, people.contributor, http_input_job(url)))
    assert job.status == "Failed"
    assert "loopback address" in job.failure_reason
    assert "STUDIO_ALLOWED_INPUT_NETWORKS" in job.failure_reason
    assert file_server.requests == []


async def test_http_input_larger_than_the_cap_fails_the_job(
    workspace, people, controller, file_server, settings
):
    settings.STUDIO_ALLOWED_INPUT_NETWORKS = ["127.0.0.1/32"]
    settings.STUDIO_MAX_DOWNLOAD_BYTES = 10
    url = f"http://127.0.0.1:{file_server.server_port}/iris.csv"
    job = await finished(await submit(workspace, people.contributor, http_input_job(url)))
    assert job.status == "Failed"
    assert "larger than the download limit (10 bytes)" in job.failure_reason


async def test_http_input_download_counts_in_the_jobs_timeout(
    workspace, people, controller, file_server, settings
):
    settings.STUDIO_ALLOWED_INPUT_NETWORKS = ["127.0.0.1/32"]
    url = f"http://127.0.0.1:{file_server.server_port}/slow/data"
    text = http_input_job(url, "limits: {timeout: 1}\n")
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Failed"
    assert "ran past limits.timeout (1 s)" in job.failure_reason


async def test_failing_command_keeps_exit_code_and_reason(workspace, people, controller):
    job = await finished(await submit(workspace, people.contributor, "command: echo bye; exit 3\n"))
    assert job.status == "Failed"
    assert job.exit_code == 3
    assert job.failure_reason == "The command exited with code 3."
    assert await lines_of(job) == ["bye"]


async def test_several_processes_of_the_one_local_instance_each_get_their_rank(
    workspace, people, controller
):
    text = (
        "command: echo $RANK $LOCAL_RANK of $WORLD_SIZE at $MASTER_ADDR\n"
        "distribution: {type: pytorch, process_count_per_instance: 2}\n"
    )
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    assert sorted(await lines_of(job)) == ["0 0 of 2 at 127.0.0.1", "1 1 of 2 at 127.0.0.1"]
    if shutil.which("mpirun"):  # and mpirun's ranks, on this host alone
        text = "command: echo rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE\n"
        text += "distribution: {type: mpi, process_count_per_instance: 3}\n"
        job = await finished(await submit(workspace, people.contributor, text), 60)
        assert job.status == "Completed", (job.failure_reason, await lines_of(job))
        ranks = sorted(line for line in await lines_of(job) if line.startswith("rank"))
        assert ranks == [f"rank {r} of 3" for r in range(3)]


async def test_timeout_is_enforced(workspace, people, controller):
    job = await submit(
        workspace, people.contributor, "command: echo start; sleep 60\nlimits: {timeout: 1}\n"
    )
    job = await finished(job, timeout=20)
    assert job.status == "Failed"
    assert "limits.timeout (1 s)" in job.failure_reason


async def test_failed_preparation_is_reported(workspace, people, controller, settings):
    settings.STUDIO_ALLOWED_INPUT_NETWORKS = ["127.0.0.1/32"]  # allowed, but nobody listens
    text = "command: cat ${{inputs.f}}\ninputs: {f: {type: uri_file, path: 'http://127.0.0.1:9/none'}}\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Failed"
    assert job.failure_reason.startswith("Preparing failed: could not download")


async def test_cancel_a_running_job(workspace, people, controller):
    job = await submit(
        workspace, people.contributor, "command: echo started; sleep 120; echo never\n"
    )

    async def started():
        return (await reload(job)).status == "Running" and await lines_of(job) == ["started"]

    await await_until(started, what="the job to print")
    await sync_to_async(services.cancel)(await reload(job))
    job = await finished(job, timeout=20)
    assert job.status == "Canceled"
    assert "CancelRequested" in await history(job)
    assert "never" not in await lines_of(job)
    await gone(job.runtime["pid"])


async def test_memory_limit_applies(workspace, people, controller):
    from compute.models import InstanceType

    await InstanceType.objects.acreate(name="tiny", resources={"limits": {"memory": "200Mi"}})
    text = (
        'command: python -c "x = bytearray(400 * 1024 * 1024)"\nresources: {instance_type: tiny}\n'
    )
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Failed"
    assert "MemoryError" in "\n".join(await lines_of(job))
    assert any("limits.memory 200Mi" in note for note in job.enforcement_notes)


async def test_cpu_affinity_applies(workspace, people, controller):
    from compute.models import InstanceType

    await InstanceType.objects.acreate(name="one-core", resources={"limits": {"cpu": "500m"}})
    text = (
        'command: python -c "import os; print(len(os.sched_getaffinity(0)))"\n'
        "resources: {instance_type: one-core}\n"
    )
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    assert await lines_of(job) == ["1"]


async def gone(pid: int) -> None:
    """The job's process exits (a kill is delivered, not instant)."""

    async def dead() -> bool:
        return not _alive(pid)

    await await_until(dead, timeout=10, what=f"process {pid} to exit")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_restarted_controller_adopts_running_jobs(workspace, people):
    text = "command: echo one; while [ ! -f go ]; do sleep 0.05; done; echo two\n"
    async with running("first") as first:
        job = await submit(workspace, people.contributor, text)

        async def printed_one():
            return await lines_of(job) == ["one"]

        await await_until(printed_one, what="the first line")
        assert job.pk in first.held
    # The first controller stopped (cleanly: its lease is released) while the job runs on.
    job = await reload(job)
    assert job.status == "Running"
    Path(job.runtime["root"], "wd", "go").touch()
    async with running("second"):
        job = await finished(job)
    assert job.status == "Completed"
    assert await lines_of(job) == ["one", "two"]  # no line lost, none doubled


async def test_a_stopping_controller_ends_its_pass_after_the_job_at_hand(
    workspace, people, monkeypatch
):
    """Asked to stop in the middle of a pass (a thousand jobs to follow, say), it follows
    no further job: it hands them all back at once, for another controller to adopt."""
    import threading

    real_observe = LocalBackend.observe
    stuck, release = threading.Event(), threading.Event()
    observed_after_stop: list[str] = []
    controlling: dict[str, Controller] = {}

    def observe(self, runtime, cursor):
        if controlling["c"].stopping.is_set():
            observed_after_stop.append(runtime["root"])
        if stuck.is_set() is False and blocking.is_set():
            stuck.set()
            release.wait(30)  # the pass is in this job when the stop comes
        return real_observe(self, runtime, cursor)

    blocking = threading.Event()
    monkeypatch.setattr(LocalBackend, "observe", observe)
    text = "command: echo up; while [ ! -f go ]; do sleep 0.05; done\n"
    stop = asyncio.Event()
    controller = controlling["c"] = Controller(name="stopping")
    task = asyncio.create_task(controller.run(stop))
    jobs = [await submit(workspace, people.contributor, text) for _ in range(3)]

    async def all_running():
        return all([len(await lines_of(job)) == 1 for job in jobs])

    await await_until(all_running, what="the three jobs to run")
    blocking.set()
    await await_until(lambda: _async(stuck.is_set()), what="a pass to be in a job")
    stop.set()
    await await_until(lambda: _async(controller.stopping.is_set()), what="the stop to be told")
    release.set()
    await asyncio.wait_for(task, 30)
    # Only the job it was in when told was looked at after: the other two were not.
    assert len(set(observed_after_stop)) <= 1, observed_after_stop
    for job in jobs:
        job = await reload(job)
        assert job.status == "Running" and job.lease_expires_at <= timezone.now()
        Path(job.runtime["root"], "wd", "go").touch()


async def _async(value):
    return value


async def test_a_job_whose_process_dies_fails_definitely(workspace, people, controller):
    job = await submit(workspace, people.contributor, "command: echo up; sleep 120\n")

    async def up():
        fresh = await reload(job)
        return fresh if fresh.status == "Running" and fresh.runtime else None

    job = await await_until(up, what="the job to run")
    os.killpg(job.runtime["pid"], signal.SIGKILL)  # launcher and command, as an OOM-kill would
    job = await finished(job)
    assert job.status == "Failed"
    assert "ended unexpectedly" in job.failure_reason


async def test_submitting_twice_runs_once(workspace, people, controller):
    from compute.backends import backend_for
    from jobs.launch import launch_spec

    job = await finished(await submit(workspace, people.contributor, "command: echo once\n"))
    backend = backend_for(None, "local")
    again = await sync_to_async(backend.submit)(await sync_to_async(launch_spec)(job))
    assert again == job.runtime  # the same handle; nothing new started


async def test_two_controllers_never_run_a_job_twice(workspace, people, settings):
    settings.STUDIO_MAX_RUNNING_JOBS = 50
    jobs = [
        await submit(workspace, people.contributor, f"command: echo job {i}\n") for i in range(12)
    ]
    async with running("one") as one, running("two") as two:
        for job in jobs:
            await finished(job)
        claimed_by_both = set(one.held) & set(two.held)
    assert not claimed_by_both
    for job in jobs:
        job = await reload(job)
        assert job.status == "Completed"
        assert (await history(job)).count("Preparing") == 1
        assert len(await lines_of(job)) == 1


async def test_jobs_beyond_capacity_wait_in_queued(workspace, people, settings):
    settings.STUDIO_MAX_RUNNING_JOBS = 1
    blocker = await submit(
        workspace, people.contributor, "command: while [ ! -f go ]; do sleep 0.05; done\n"
    )
    waiting = await submit(workspace, people.contributor, "command: echo after\n")
    async with running("small"):

        async def blocker_runs():
            return (await reload(blocker)).status == "Running"

        await await_until(blocker_runs, what="the first job to run")

        async def says_why():
            job = await reload(waiting)
            return job.status == "Queued" and "free slot" in job.waiting_reason

        await await_until(says_why, what="the waiting job to say why")
        Path((await reload(blocker)).runtime["root"], "wd", "go").touch()
        done = await finished(waiting)
        assert done.status == "Completed" and done.waiting_reason == ""


class Unlimited(LocalBackend):
    """A compute that queues work itself, as a cluster does (local processes underneath)."""

    kind = "cluster"

    @classmethod
    def capacity(cls):
        return None


async def test_a_full_local_compute_does_not_hold_up_other_kinds(workspace, people, settings):
    from compute.models import ComputeTarget

    settings.STUDIO_MAX_RUNNING_JOBS = 1
    settings.STUDIO_COMPUTE_BACKENDS = {
        **settings.STUDIO_COMPUTE_BACKENDS,
        "cluster": "tests.test_controller.Unlimited",
    }
    await ComputeTarget.objects.acreate(workspace=workspace, name="big", kind="cluster")
    blocker = await submit(
        workspace, people.contributor, "command: while [ ! -f go ]; do sleep 0.05; done\n"
    )
    local_waits = await submit(workspace, people.contributor, "command: echo local\n")
    elsewhere = [
        await submit(workspace, people.contributor, f"command: echo c{i}\ncompute: big\n")
        for i in range(3)
    ]
    async with running("mixed"):
        for job in elsewhere:  # all three run while local has no free slot
            assert (await finished(job)).status == "Completed"
        assert (await reload(local_waits)).status == "Queued"
        Path((await reload(blocker)).runtime["root"], "wd", "go").touch()
        assert (await finished(local_waits)).status == "Completed"


async def test_a_job_the_controller_cannot_follow_fails_and_others_go_on(
    workspace, people, controller, monkeypatch
):
    from compute.backends.local import LocalBackend

    real_observe = LocalBackend.observe

    def flaky(self, runtime, cursor):
        if "broken" in runtime["root"]:
            raise OSError("disk went away")
        return real_observe(self, runtime, cursor)

    monkeypatch.setattr(LocalBackend, "observe", flaky)
    broken = await submit(workspace, people.contributor, "command: sleep 60\nname: broken\n")
    fine = await submit(workspace, people.contributor, "command: echo fine\nname: fine\n")
    assert (await finished(fine)).status == "Completed"
    broken = await finished(broken)
    assert broken.status == "Failed"
    assert broken.failure_reason == "The studio lost track of the job: disk went away"
    await gone(broken.runtime["pid"])


async def test_output_without_newlines_still_arrives(workspace, people, controller):
    text = "command: python -c \"import sys; sys.stdout.write('x' * 200000)\"\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed"
    lines = await lines_of(job)
    assert "".join(lines) == "x" * 200000
    assert len(lines) > 1


async def test_nul_bytes_in_output_do_not_stop_the_controller(workspace, people, controller):
    text = "command: printf 'a\\0b\\n'; echo after\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    assert await lines_of(job) == ["a\ufffdb", "after"]


async def test_one_bad_job_does_not_block_the_others(workspace, people, monkeypatch):
    """A job whose lines the database refuses fails on its own; the others run on."""
    from django.db.utils import DataError

    original = services.append_logs

    def refuse_poison(job, records, cursor):
        if job.display_name == "poison" and records:
            raise DataError("invalid byte sequence")
        return original(job, records, cursor)

    monkeypatch.setattr(services, "append_logs", refuse_poison)
    async with running():
        bad = await submit(
            workspace, people.contributor, "display_name: poison\ncommand: echo x; sleep 30\n"
        )
        good = await submit(workspace, people.contributor, "command: echo fine\n")
        good = await finished(good)
        assert good.status == "Completed"
        bad = await finished(bad, timeout=30)
    assert bad.status == "Failed"
    assert bad.failure_reason.startswith("The studio lost track of the job: invalid byte")


async def test_a_quiet_job_is_not_asked_about_every_tick(workspace, people, monkeypatch):
    """The local backend tells the controller when a job writes; a job that writes nothing
    is looked at once a second (the fallback), not every 20 ms; its lines still arrive
    as they are written."""
    looks: list[float] = []
    real_observe = LocalBackend.observe

    def counted(self, runtime, cursor):
        looks.append(time.monotonic())
        return real_observe(self, runtime, cursor)

    monkeypatch.setattr(LocalBackend, "observe", counted)
    text = "command: echo start; while [ ! -f go ]; do sleep 0.05; done; echo go\n"
    async with running("quiet"):
        job = await submit(workspace, people.contributor, text)

        async def started():
            return await lines_of(job) == ["start"]

        await await_until(started, what="the first line")
        looks.clear()
        await asyncio.sleep(2)  # a quiet stretch: how often is the job asked about?
        assert len(looks) <= 4, f"{len(looks)} looks in 2 s"
        Path((await reload(job)).runtime["root"], "wd", "go").touch()
        assert (await finished(job)).status == "Completed"
    assert await lines_of(job) == ["start", "go"]


async def test_without_news_the_controller_asks(workspace, people, monkeypatch):
    """Where the backend cannot tell (no inotify: macOS), jobs are followed by asking."""
    monkeypatch.setattr(LocalBackend, "events_fd", lambda self: None)
    async with running("asking"):
        job = await finished(await submit(workspace, people.contributor, "command: echo hi\n"))
    assert job.status == "Completed"
    assert await lines_of(job) == ["hi"]


async def test_a_job_queued_before_the_artifact_store_still_runs(workspace, people, tmp_path):
    """Jobs submitted by an older studio keep their uploads in a host folder."""
    text = "command: cat ${{inputs.words}}\ninputs: {words: {type: uri_file, path: ./w.txt}}\n"
    uploads = {"inputs.words": services.Upload(io.BytesIO(b"old layout\n"), "w.txt")}
    job = await submit(workspace, people.contributor, text, uploads)
    legacy = tmp_path / "uploads" / str(job.pk)
    legacy.mkdir(parents=True)
    (legacy / "inputs.words").write_bytes(b"old layout\n")
    (legacy / "inputs.words.filename").write_text("w.txt")
    await Job.objects.filter(pk=job.pk).aupdate(uploads={}, upload_dir=str(legacy))
    async with running("legacy"):
        job = await finished(job)
    assert job.status == "Completed", job.failure_reason
    assert await lines_of(job) == ["old layout"]


async def test_the_running_jobs_cap_holds_across_a_controller_restart(workspace, people, settings):
    """A killed studio's controller leaves its jobs running under leases that have not run
    out yet: the next controller on the host counts them, adopts them when the leases
    end, and starts a queued job only when one of them has ended."""
    settings.STUDIO_MAX_RUNNING_JOBS = 2
    gate = "command: while [ ! -f go ]; do sleep 0.05; done\n"
    first = [await submit(workspace, people.contributor, gate) for _ in range(2)]
    queued = await submit(workspace, people.contributor, "command: echo after\n")

    async def both_run() -> bool:
        return all([(await reload(job)).status == "Running" for job in first])

    killed = Controller()  # as `serve` names it: host, pid, instance
    stop = asyncio.Event()
    task = asyncio.create_task(killed.run(stop))
    await await_until(both_run, what="the first two jobs to run")
    killed.release_all = lambda: None  # type: ignore[method-assign] # SIGKILL says nothing
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    leases = [(await reload(job)).lease_expires_at for job in first]
    assert all(lease is not None and lease > timezone.now() for lease in leases)
    assert (await reload(queued)).status == "Queued"
    stop = asyncio.Event()
    restarted = Controller()
    task = asyncio.create_task(restarted.run(stop))
    try:

        async def adopted() -> bool:
            return len(restarted.held) == 2

        await await_until(adopted, 40, "the restarted controller to adopt both jobs")
        assert (await reload(queued)).status == "Queued"  # never 3 at once
        Path((await reload(first[0])).runtime["root"], "wd", "go").touch()
        assert (await finished(queued)).status == "Completed"
        assert (await reload(first[1])).status == "Running"
    finally:
        Path((await reload(first[1])).runtime["root"], "wd", "go").touch()
        await finished(first[1])
        stop.set()
        await task
