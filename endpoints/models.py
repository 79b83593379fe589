"""Online endpoints (a stable scoring URI with keys and a traffic split) and their
deployments (a model, a scoring script and an environment, run as instances)."""

from typing import ClassVar

from django.conf import settings
from django.db import models

from studio.crypto import EncryptedTextField
from studio.models import Workspace


class AuthMode(models.TextChoices):
    KEY = "key"
    AML_TOKEN = "aml_token"  # noqa: S105 - a mode's name, not a secret


class State(models.TextChoices):
    """Azure's provisioning states."""

    CREATING = "Creating"
    UPDATING = "Updating"
    SCALING = "Scaling"
    DELETING = "Deleting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


class Endpoint(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="endpoints")
    # One router serves every workspace (/api/v1/endpoint/<name>/score): names are unique
    # across the studio, as within an Azure region.
    name = models.CharField(max_length=32, unique=True)
    compute = models.ForeignKey(
        "compute.ComputeTarget", on_delete=models.PROTECT, related_name="endpoints"
    )
    auth_mode = models.CharField(max_length=20, choices=AuthMode.choices, default=AuthMode.KEY)
    traffic = models.JSONField(default=dict, blank=True)  # deployment -> percent
    mirror_traffic = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    # {"primary": ..., "secondary": ...}, encrypted; shown only by get-credentials.
    keys = EncryptedTextField(blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.SUCCEEDED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=32)
    type = models.CharField(max_length=20)  # kubernetes | managed
    # The validated document, with Azure's defaults filled in.
    document = models.JSONField(default=dict)
    model = models.ForeignKey(
        "registry.Model", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    code = models.CharField(max_length=500, blank=True)  # the code archive, in the artifact store
    environment_used = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.CREATING)
    error_code = models.CharField(max_length=60, blank=True)  # Azure's, when it failed
    reason = models.TextField(blank=True)
    # What runs now: [{"url", "pid"}] for the local compute.
    instances = models.JSONField(default=list, blank=True)
    generation = models.IntegerField(default=1)  # bumped by every update: a rollout
    # The deployment runner that acts on it, until when (renewed every tick): one alone,
    # however many `serve` and `runcontroller` processes run (endpoints.runner).
    runner = models.CharField(max_length=100, blank=True)
    runner_lease_expires_at = models.DateTimeField(null=True, blank=True)
    # What changed, newest last: [{"at", "generation", "what"}] (the last 100).
    history = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("endpoint", "name")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("endpoint", "name"), name="deployment_per_endpoint")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint.name}/{self.name}"


class DeploymentLog(models.Model):
    """Where the deployment's log store has read up to (endpoints.logs): its last line's
    seq, and a cursor per source (a local instance's file, a pod's container). Apart from
    the deployment's row, which the runner saves whole."""

    deployment = models.OneToOneField(
        Deployment, on_delete=models.CASCADE, primary_key=True, related_name="log"
    )
    last_seq = models.PositiveIntegerField(default=0)
    cursors = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"{self.deployment_id}#{self.last_seq}"


class DeploymentLogLine(models.Model):
    """One line of a deployment's containers, in the order the store took them."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField()
    ts = models.DateTimeField()
    instance = models.CharField(max_length=253)  # instance-0 locally, the pod's name on a cluster
    container = models.CharField(max_length=40)  # inference-server | storage-initializer
    line = models.TextField()

    class Meta:
        ordering = ("seq",)
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("deployment", "seq"), name="one_deployment_line_per_seq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id}#{self.seq}"

    def as_message(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "stream": "stdout",
            "instance": self.instance,
            "container": self.container,
            "line": self.line,
        }


class TrafficSecond(models.Model):
    """What one router saw of a deployment in one second (endpoints.traffic)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField()
    router = models.CharField(max_length=64)  # host-pid: one row per router per second
    codes = models.JSONField(default=dict)  # {"200": n, "503": n}
    latency = models.JSONField(default=list)  # requests per bucket (traffic.BOUNDS_MS)
    busy = models.IntegerField(default=0)  # most requests in flight or waiting at once
    replicas = models.IntegerField(default=0)

    class Meta:
        indexes: ClassVar = [models.Index(fields=("deployment", "at"), name="traffic_by_second")]
        # A router resends seconds whose write it could not confirm: kept once.
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("deployment", "at", "router"), name="one_traffic_row_per_router_second"
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id}@{self.at}"


class BatchEndpoint(models.Model):
    """A name to invoke for batch scoring; each invocation is a job of its default (or a
    named) deployment. Invoked through the studio's API with the caller's own token."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="batch_endpoints"
    )
    name = models.CharField(max_length=32)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    default_deployment = models.CharField(max_length=32, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("workspace", "name"), name="batch_endpoint_per_workspace"
            )
        ]

    def __str__(self) -> str:
        return self.name


class BatchDeployment(models.Model):
    """A model, its scoring script, environment and compute, and how to cut the input."""

    endpoint = models.ForeignKey(
        BatchEndpoint, on_delete=models.CASCADE, related_name="deployments"
    )
    name = models.CharField(max_length=32)
    # The validated document, with Azure's defaults filled in (settings always nested).
    document = models.JSONField(default=dict)
    model = models.ForeignKey("registry.Model", on_delete=models.PROTECT, related_name="+")
    code = models.CharField(max_length=500, blank=True)  # the code archive, in the artifact store
    compute = models.ForeignKey(
        "compute.ComputeTarget", on_delete=models.PROTECT, related_name="batch_deployments"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("endpoint", "name")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("endpoint", "name"), name="batch_deployment_per_endpoint"
            )
        ]

    def __str__(self) -> str:
        return f"{self.endpoint.name}/{self.name}"


class BatchJob(models.Model):
    """An invocation: the ordinary job it started, and which deployment ran it."""

    endpoint = models.ForeignKey(BatchEndpoint, on_delete=models.CASCADE, related_name="jobs")
    deployment = models.ForeignKey(
        BatchDeployment, null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    deployment_name = models.CharField(max_length=32)  # kept when the deployment is gone
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="batch")

    class Meta:
        ordering = ("-job__created_at", "-id")

    def __str__(self) -> str:
        return f"{self.endpoint.name}/{self.deployment_name}: {self.job_id}"
