"""Experiments and their runs, as MLflow's tracking server keeps them: params, tags and
metric points, per workspace."""

import math
import uuid
from typing import ClassVar

from django.db import models

from studio.models import Workspace


class Lifecycle(models.TextChoices):
    ACTIVE = "active"
    DELETED = "deleted"


class Experiment(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=500)
    artifact_location = models.CharField(max_length=1000, blank=True)
    lifecycle_stage = models.CharField(
        max_length=10, choices=Lifecycle.choices, default=Lifecycle.ACTIVE
    )
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("workspace", "name"), name="experiment_per_workspace")
        ]

    def __str__(self) -> str:
        return self.name


def new_run_id() -> str:
    return uuid.uuid4().hex


class RunStatus(models.TextChoices):
    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Run(models.Model):
    run_id = models.CharField(max_length=32, unique=True, default=new_run_id)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=250, blank=True)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.RUNNING)
    start_time = models.BigIntegerField(null=True, blank=True)  # ms since the epoch
    end_time = models.BigIntegerField(null=True, blank=True)
    lifecycle_stage = models.CharField(
        max_length=10, choices=Lifecycle.choices, default=Lifecycle.ACTIVE
    )
    user_id = models.CharField(max_length=150, blank=True)
    params = models.JSONField(default=dict, blank=True)  # a param, once logged, never changes
    tags = models.JSONField(default=dict, blank=True)
    # Each metric's latest point ({key: {value, timestamp, step}}): run lists and charts'
    # legends read it without touching the points. JSON (PostgreSQL's jsonb above all) has
    # no NaN or infinity: those are kept as "special": "NaN" | "Infinity" | "-Infinity"
    # without a "value" (see services.latest_point), and sort and search as missing.
    latest_metrics = models.JSONField(default=dict, blank=True)
    # MLflow's run inputs ({"dataset_inputs": [...], "model_inputs": [...]}) and outputs
    # ({"model_outputs": [{"model_id", "step"}]}), as `log-inputs` and `outputs` gave them.
    inputs = models.JSONField(default=dict, blank=True)
    outputs = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-start_time", "-id")
        indexes: ClassVar = [
            models.Index(fields=("experiment", "-start_time", "-id"), name="run_list"),
        ]

    def __str__(self) -> str:
        return self.run_id


class Metric(models.Model):
    """One point of a metric's history."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    key = models.CharField(max_length=250)
    # NaN is kept as is_nan (value 0): SQLite stores NaN as NULL. Infinities are floats.
    value = models.FloatField()
    is_nan = models.BooleanField(default=False)
    timestamp = models.BigIntegerField()  # ms since the epoch
    step = models.BigIntegerField(default=0)

    class Meta:
        ordering = ("step", "timestamp", "id")
        indexes: ClassVar = [
            models.Index(fields=("run", "key", "step", "timestamp", "id"), name="metric_history"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} {self.key}@{self.step}"

    @property
    def reading(self) -> float:
        return math.nan if self.is_nan else self.value


def new_model_id() -> str:
    return f"m-{uuid.uuid4().hex}"


class LoggedModelStatus(models.TextChoices):
    PENDING = "LOGGED_MODEL_PENDING"
    READY = "LOGGED_MODEL_READY"
    FAILED = "LOGGED_MODEL_UPLOAD_FAILED"


class LoggedModel(models.Model):
    """MLflow 3's logged model: what `mlflow.<flavor>.log_model` (and autolog) makes in an
    experiment, usually from a run, with artifacts of its own at
    `mlflow-artifacts:/<experiment>/models/<model_id>/artifacts`. Registering it makes a
    version in the studio's model registry."""

    model_id = models.CharField(max_length=40, unique=True, default=new_model_id)
    experiment = models.ForeignKey(
        Experiment, on_delete=models.CASCADE, related_name="logged_models"
    )
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="logged_models"
    )
    name = models.CharField(max_length=250)
    model_type = models.CharField(max_length=250, blank=True)
    status = models.CharField(
        max_length=30, choices=LoggedModelStatus.choices, default=LoggedModelStatus.PENDING
    )
    creator_id = models.CharField(max_length=150, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    lifecycle_stage = models.CharField(
        max_length=10, choices=Lifecycle.choices, default=Lifecycle.ACTIVE
    )
    created_at = models.BigIntegerField()  # ms since the epoch
    updated_at = models.BigIntegerField()

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.name} ({self.model_id})"
