"""What the job controller needs from any compute, local processes or Kubernetes."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings


@dataclass
class LaunchSpec:
    """Everything needed to run one job, in plain data (the launcher's launch file)."""

    job_key: str  # unique across the studio: "<workspace id>/<job name>"
    job_id: int  # the job's id: unique, never reused
    name: str
    command: str
    # Uploads are artifact references, {"artifact": name, "filename": ...}: the backend
    # fetches them from the artifact store (compute.backends.artifacts) for the job.
    code: dict[str, str] | None
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    environment_variables: dict[str, str]
    timeout: int | None
    requests: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    grace_seconds: float = 10.0
    # For a launcher on another host: opens this job's uploads and outputs at the studio
    # (jobs/api/io.py), and nothing else. Uploads name their `key` there.
    job_token: str = ""
    image: str = ""  # the environment's image, for computes that run images
    shm_size: str = "2g"  # resources.shm_size: /dev/shm, Azure's default
    instance_count: int = 1  # resources.instance_count: the nodes of a distributed job
    labels: dict[str, str] = field(default_factory=dict)  # workspace, job, compute (k8s labels)
    distribution: dict[str, Any] | None = None  # its type (pytorch, tensorflow), as Azure's
    # Packages to install before the command runs, in a virtual environment kept by `key`:
    # {"key", "python" ("3.8" or None), "requirements", "label", "notes"}; None: nothing.
    environment: dict[str, Any] | None = None
    # An image to build first from a Docker context (computes that build images):
    # {"artifact": the context archive, "dockerfile_path", "hash", "label"}.
    build: dict[str, Any] | None = None
    # The workspace's MLflow tracking URI, as a path on the studio: a compute that knows
    # how its jobs reach the studio gives them MLFLOW_TRACKING_URI from it.
    tracking_path: str = ""


def tracking_variables(spec: LaunchSpec, studio_url: str) -> dict[str, str]:
    """The job's environment, with MLFLOW_TRACKING_URI when the studio's URL is known (a
    job's own setting wins)."""
    variables = dict(spec.environment_variables)
    if studio_url and spec.tracking_path:
        variables.setdefault("MLFLOW_TRACKING_URI", studio_url.rstrip("/") + spec.tracking_path)
    return variables


def launcher_bounds() -> dict[str, Any]:
    """The limits every launcher applies, wherever it runs, as its launch file says them."""
    return {
        "bounds": {
            "max_log_bytes": settings.STUDIO_MAX_LOG_BYTES,
            "max_archive_members": settings.STUDIO_MAX_ARCHIVE_MEMBERS,
            "max_archive_bytes": settings.STUDIO_MAX_ARCHIVE_BYTES,
            "max_download_bytes": settings.STUDIO_MAX_DOWNLOAD_BYTES,
            "system_metrics_seconds": settings.STUDIO_SYSTEM_METRICS_SECONDS,
        },
        "allowed_networks": list(settings.STUDIO_ALLOWED_INPUT_NETWORKS),
    }


@dataclass
class LogRecord:
    ts: float
    stream: str  # "stdout" | "stderr"
    line: str


@dataclass
class Observation:
    """What changed since the last look: new log lines, and the phase if it moved."""

    lines: list[LogRecord]
    cursor: dict[str, Any]  # opaque; stored with the lines and handed back next time
    # Queued (the compute holds it but cannot start it yet: `waiting_reason` says why),
    # Preparing, Running, Finalizing, Completed, Failed, Canceled; None: no change.
    phase: str | None = None
    exit_code: int | None = None
    reason: str = ""
    waiting_reason: str = ""
    # A distributed job's instances, each {"index", "phase", "node", "reason"}; None: no news.
    instances: list[dict[str, Any]] | None = None
    # With a terminal phase: the files the job left, each {"output", "path", "size",
    # "artifact"}, already published to the artifact store under that name.
    outputs: list[dict[str, Any]] = field(default_factory=list)


class ComputeBackend(abc.ABC):
    kind: str

    @classmethod
    def capacity(cls) -> int | None:
        """How many jobs of this kind one controller may hold at once; None: no limit
        here, as a compute that queues work itself (a cluster) needs none."""
        return None

    @classmethod
    def from_target(cls, target: Any) -> ComputeBackend:
        """Build the backend for one compute target, from its settings and credentials
        (read once: compute.backends keeps the instance until the target changes)."""
        return cls()

    @abc.abstractmethod
    def enforcement_notes(self, requests: dict[str, Any], limits: dict[str, Any]) -> list[str]:
        """Plain sentences on what of an instance type this compute cannot enforce."""

    @abc.abstractmethod
    def submit(self, spec: LaunchSpec) -> dict[str, Any]:
        """Start the job and return its handle (stored as the job's runtime).

        Idempotent: submitting a job that already started returns the same handle and
        starts nothing new.
        """

    def placement_warnings(self, instance_type: Any) -> list[str]:
        """Why no node could take a job of this size now (said at submit, never refused:
        an autoscaler may add one); nothing where the compute cannot tell."""
        return []

    def render(self, spec: LaunchSpec) -> list[dict[str, Any]]:
        """The objects `submit` would create for this job, where the compute has any (a
        cluster's Job and ConfigMap), for `job validate` to show; nothing is created."""
        return []

    @abc.abstractmethod
    def observe(self, runtime: dict[str, Any], cursor: dict[str, Any]) -> Observation:
        """New log lines after `cursor`, and the job's phase."""

    @abc.abstractmethod
    def cancel(self, runtime: dict[str, Any], *, force: bool = False) -> None:
        """Ask the job to stop (terminate); with force, kill it outright."""

    def output_root(self, runtime: dict[str, Any], output: str) -> str | None:
        """Where one output's files still lie on this host, for jobs that ended before the
        artifact store (their listing has no `artifact`); None for everything else."""
        return None

    # -- being told instead of asking (optional) -------------------------------------------
    # A backend that can tell when a job has news (a watch, a file written) offers a file
    # descriptor that becomes readable then. The controller looks at those jobs at once and
    # at the others only once a second; a backend without one is looked at every tick.
    def events_fd(self) -> int | None:
        return None

    def watch(self, runtime: dict[str, Any]) -> str | None:
        """Start reporting news of this job; returns the key `changed` will report."""
        return None

    def unwatch(self, runtime: dict[str, Any]) -> None:  # noqa: B027 - optional, no-op
        """Stop reporting news of this job."""

    def close(self) -> None:  # noqa: B027 - optional, no-op
        """This instance is being replaced (its target changed): stop its threads."""

    def changed(self) -> set[str]:
        """Keys (from `watch`) of the jobs with news since the last call; never blocks."""
        return set()
