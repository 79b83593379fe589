"""Jobs, the record of their state changes, and their log lines."""

import uuid
from typing import ClassVar

from django.conf import settings
from django.db import models

from compute.models import ComputeTarget
from data.models import DataAsset
from studio.models import Workspace


class Status(models.TextChoices):
    """Azure ML's job states."""

    NOT_STARTED = "NotStarted"
    QUEUED = "Queued"
    PREPARING = "Preparing"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"


TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELED)
ACTIVE = (Status.PREPARING, Status.RUNNING, Status.FINALIZING, Status.CANCEL_REQUESTED)


def new_run_id() -> str:
    """A job's MLflow run id: random, so knowing a job's name tells nothing of its run's."""
    return uuid.uuid4().hex


class Job(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=255)
    # The MLflow run the job is (tracking's Run.run_id), fixed at submission.
    run_id = models.CharField(max_length=32, unique=True, default=new_run_id, editable=False)
    display_name = models.CharField(max_length=255, blank=True)
    experiment_name = models.CharField(max_length=255, default="Default")
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # The validated spec as submitted (names as in the YAML) and the YAML text itself.
    spec = models.JSONField(default=dict)
    source_yaml = models.TextField(blank=True)
    compute = models.ForeignKey(
        ComputeTarget, null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    compute_name = models.CharField(max_length=255)
    compute_kind = models.CharField(max_length=20)
    instance_type = models.CharField(max_length=253)
    # The instance type's node selector and resources as they were at submission.
    resources = models.JSONField(default=dict)
    enforcement_notes = models.JSONField(default=list, blank=True)
    # Uploaded code and inputs, in the artifact store: {"code" | "inputs.<name>":
    # {"artifact": name, "filename": ...}} (jobs.artifacts).
    uploads = models.JSONField(default=dict, blank=True)
    # Before the artifact store: the host folder of a job's uploads (older jobs only).
    upload_dir = models.CharField(max_length=500, blank=True)
    # Inputs that name data (an asset, a datastore path, a storage URL), as resolved at
    # submission: {"<input>": {"uri": canonical, "asset": "name:version" | None}}. A job
    # that said @latest keeps the version it got.
    data_inputs = models.JSONField(default=dict, blank=True)
    # Where each named output's files go, and the data asset they become on completion:
    # {"<output>": {"uri": azureml://datastores/..., "name": str | None, "version": ...}}.
    data_outputs = models.JSONField(default=dict, blank=True)
    # The environment as resolved at submission (environments.services.Resolved.record):
    # its label, image, Python and packages; empty when the job named none.
    environment_used = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NOT_STARTED)
    exit_code = models.IntegerField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    # Why a Queued job has not started yet (no free slot on its compute, say).
    waiting_reason = models.CharField(max_length=500, blank=True)
    outputs = models.JSONField(default=list, blank=True)
    # A distributed job's instances as its compute last saw them: index, phase, node, why.
    instances = models.JSONField(default=list, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    # Controller bookkeeping: the backend's handle, how far the logs were read, the last
    # seq stored, and which controller holds the job until when.
    runtime = models.JSONField(default=dict, blank=True)
    log_cursor = models.JSONField(default=dict, blank=True)
    last_seq = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("workspace", "name"), name="job_name_per_workspace")
        ]
        indexes: ClassVar = [
            models.Index(fields=("workspace", "-created_at", "-id"), name="job_list"),
            models.Index(
                fields=("workspace", "status", "-created_at", "-id"), name="job_list_status"
            ),
            models.Index(
                fields=("workspace", "experiment_name", "-created_at", "-id"),
                name="job_list_experiment",
            ),
            models.Index(fields=("status", "created_at"), name="job_queue"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def group(self) -> str:
        """The channel-layer group that carries this job's log lines."""
        return f"job-{self.pk}"


class StatusChange(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="status_changes")
    status = models.CharField(max_length=20, choices=Status.choices)
    at = models.DateTimeField()
    message = models.TextField(blank=True)

    class Meta:
        ordering = ("at", "id")

    def __str__(self) -> str:
        return f"{self.job} {self.status}"


class LogLine(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    ts = models.DateTimeField()
    stream = models.CharField(max_length=6)
    line = models.TextField()

    class Meta:
        ordering = ("seq",)
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("job", "seq"), name="one_line_per_seq")
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq}"

    def as_message(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "stream": self.stream,
            "line": self.line,
        }


class DataUse(models.Model):
    """Lineage: a data asset version a job read (an input) or made (an output)."""

    class Direction(models.TextChoices):
        INPUT = "input"
        OUTPUT = "output"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="data_uses")
    asset = models.ForeignKey(DataAsset, on_delete=models.CASCADE, related_name="uses")
    name = models.CharField(max_length=255)  # the job's input or output
    direction = models.CharField(max_length=6, choices=Direction.choices)

    class Meta:
        ordering = ("direction", "name")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("job", "direction", "name"), name="one_asset_per_job_port"
            )
        ]

    def __str__(self) -> str:
        return f"{self.job_id} {self.direction} {self.name}"
