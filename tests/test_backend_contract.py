"""What every compute backend owes the controller (compute/backends/base.py), checked on
each backend there is: local now, Kubernetes (against its emulated API server) next.

Driven through the backend alone, as the controller drives it: submit, observe with a
cursor until a terminal phase, cancel."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from compute.backends import artifacts
from compute.backends.base import ComputeBackend, LaunchSpec, LogRecord
from compute.backends.local import LocalBackend

TERMINAL = ("Completed", "Failed", "Canceled")
ORDER = ("Preparing", "Running", "Finalizing", *TERMINAL)


@pytest.fixture(params=["local"])
def backend(request, tmp_path, settings) -> Iterator[ComputeBackend]:
    settings.STUDIO_CANCEL_GRACE_SECONDS = 2
    if request.param == "local":
        yield LocalBackend(jobs_dir=tmp_path / "jobs")


_ids = iter(range(10_000, 100_000))


def spec(command: str, **overrides: Any) -> LaunchSpec:
    job_id = next(_ids)
    values: dict[str, Any] = {
        "job_key": f"contract/job-{job_id}",
        "job_id": job_id,
        "name": f"job-{job_id}",
        "command": command,
        "code": None,
        "inputs": {},
        "outputs": {},
        "environment_variables": {},
        "timeout": None,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return LaunchSpec(**values)


@dataclass
class Followed:
    """What the controller would have seen of one job."""

    lines: list[LogRecord] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)


def follow(
    backend: ComputeBackend,
    runtime: dict[str, Any],
    until: Callable[[Followed], bool] = lambda f: bool(f.phases) and f.phases[-1] in TERMINAL,
    timeout: float = 30,
) -> tuple[Followed, dict[str, Any]]:
    seen, cursor = Followed(), {}
    deadline = time.monotonic() + timeout
    while not until(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; saw {seen.phases} and {len(seen.lines)} lines")
        observation = backend.observe(runtime, cursor)
        seen.lines.extend(observation.lines)
        cursor = observation.cursor
        if observation.phase and (not seen.phases or seen.phases[-1] != observation.phase):
            seen.phases.append(observation.phase)
        if observation.phase in TERMINAL:
            seen.exit_code, seen.reason = observation.exit_code, observation.reason
            seen.outputs = observation.outputs
        time.sleep(0.02)
    return seen, cursor


def test_a_job_runs_to_completed_with_every_line_once_in_order(backend):
    runtime = backend.submit(spec("for i in $(seq 1 3000); do echo line-$i; done; echo err >&2"))
    seen, cursor = follow(backend, runtime)
    assert seen.phases[-1] == "Completed" and seen.exit_code == 0
    assert [r.line for r in seen.lines if r.stream == "stdout"] == [
        f"line-{i}" for i in range(1, 3001)
    ]
    assert [r.line for r in seen.lines if r.stream == "stderr"] == ["err"]
    # Phases only move forward.
    assert [ORDER.index(p) for p in seen.phases] == sorted(ORDER.index(p) for p in seen.phases)
    # Once over, observing again from the cursor adds nothing.
    again = backend.observe(runtime, cursor)
    assert again.lines == [] and again.phase == "Completed"


def test_submitting_twice_runs_once(backend):
    job = spec("echo once")
    first = backend.submit(job)
    assert backend.submit(job) == first
    seen, _ = follow(backend, first)
    assert [r.line for r in seen.lines] == ["once"]


def test_a_failing_command_reports_its_exit_code_and_reason(backend):
    seen, _ = follow(backend, backend.submit(spec("exit 7")))
    assert seen.phases[-1] == "Failed"
    assert seen.exit_code == 7
    assert "7" in seen.reason


def test_cancel_stops_a_running_job(backend):
    runtime = backend.submit(spec("echo up; sleep 300"))
    follow(backend, runtime, until=lambda f: any(r.line == "up" for r in f.lines))
    backend.cancel(runtime)
    seen, _ = follow(backend, runtime)
    assert seen.phases[-1] == "Canceled"


def test_force_cancel_ends_a_job_that_ignores_terminate(backend):
    runtime = backend.submit(spec("trap '' TERM; echo up; while true; do sleep 0.1; done"))
    follow(backend, runtime, until=lambda f: any(r.line == "up" for r in f.lines))
    backend.cancel(runtime, force=True)
    seen, _ = follow(backend, runtime, timeout=15)
    assert seen.phases[-1] in ("Canceled", "Failed")


def test_outputs_are_listed_and_published_to_the_artifact_store(backend):
    runtime = backend.submit(
        spec(
            "echo a > outputs/a.txt; echo m > ${{outputs.model}}/m.bin",
            outputs={"model": {"type": "uri_folder"}},
        )
    )
    seen, _ = follow(backend, runtime)
    assert sorted((o["output"], o["path"]) for o in seen.outputs) == [
        ("default", "a.txt"),
        ("model", "m.bin"),
    ]
    published = {o["path"]: o["artifact"] for o in seen.outputs}
    with artifacts.store().open(published["m.bin"], "rb") as f:
        assert f.read() == b"m\n"


def test_a_job_whose_process_vanishes_fails_with_a_reason_and_leaves_nothing(backend):
    runtime = backend.submit(spec("echo up; sleep 1.5; echo x > outputs/survived"))
    follow(backend, runtime, until=lambda f: any(r.line == "up" for r in f.lines))
    os.killpg(int(runtime["pid"]), signal.SIGKILL)  # the launcher is lost, not the command
    seen, _ = follow(backend, runtime)
    assert seen.phases[-1] == "Failed"
    assert seen.reason
    time.sleep(2.5)  # past the moment the command would have written, had it lived on
    root = backend.output_root(runtime, "default")
    assert root is not None and not (Path(root) / "survived").exists()


def test_enforcement_notes_are_sentences(backend):
    notes = backend.enforcement_notes({"cpu": "1"}, {"cpu": "2", "memory": "1Gi"})
    assert notes and all(isinstance(n, str) and n.endswith(".") for n in notes)


@pytest.mark.django_db
def test_a_targets_backend_is_built_once_and_again_when_the_target_changes(workspace):
    from compute.backends import backend_for
    from compute.models import ComputeTarget

    local = ComputeTarget.objects.get(workspace=workspace, name="local")
    other = ComputeTarget.objects.create(workspace=workspace, name="other", kind="local")
    first = backend_for(local)
    assert backend_for(ComputeTarget.objects.get(pk=local.pk)) is first  # kept
    assert backend_for(other) is not first  # one per target
    local.description = "changed"
    local.save()
    assert backend_for(local) is not first  # rebuilt from the new settings
    with pytest.raises(LookupError, match="No backend for compute kind 'quantum'"):
        backend_for(None, "quantum")
