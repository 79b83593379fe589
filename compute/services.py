"""Compute operations for IT-ops, shared by the console pages and the API."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from compute.models import ComputeKind, ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE, DEFAULT_RESOURCES
from studio.errors import Conflict
from studio.models import Workspace


class ComputeInUse(Conflict):
    """Refused: the object is needed (active jobs, or Azure ML's default instance type)."""


def default_compute(workspace: Workspace) -> ComputeTarget | None:
    """What a job that names no compute target runs on: the workspace's default, else its
    first target (the default may have been deleted)."""
    targets = workspace.computes.order_by("-is_default", "name")
    return targets.first()


def became_available(compute: ComputeTarget) -> None:
    """A new compute target is the workspace's default when it has none yet."""
    if not compute.workspace.computes.filter(is_default=True).exists():
        ComputeTarget.objects.filter(pk=compute.pk).update(is_default=True)
        compute.is_default = True


def delete_compute(compute: ComputeTarget) -> None:
    """Refused while something still needs the target: each app that uses compute targets
    says so through STUDIO_COMPUTE_IN_USE (jobs: its queued and running jobs)."""
    for path in settings.STUDIO_COMPUTE_IN_USE:
        reason = import_string(path)(compute)
        if reason:
            raise ComputeInUse(f"Compute target {compute.name!r} {reason}.")
    compute.delete()


def delete_instance_type(instance_type: InstanceType) -> None:
    if instance_type.name == DEFAULT_INSTANCE_TYPE:
        raise ComputeInUse(
            f"{DEFAULT_INSTANCE_TYPE} is used by every job that names no instance type; "
            "edit it instead of deleting it."
        )
    instance_type.delete()


def ensure_default_instance_type() -> InstanceType:
    instance_type, _ = InstanceType.objects.get_or_create(
        cluster=None,  # the local host's; each cluster has its own
        name=DEFAULT_INSTANCE_TYPE,
        defaults={
            "resources": DEFAULT_RESOURCES,
            "description": "Used when a job names no instance type.",
        },
    )
    return instance_type


SEED_INSTANCE_TYPES = {
    "cpu-small": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    },
    "cpu-large": {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    },
}


@transaction.atomic
def seed_local(workspace: Workspace) -> ComputeTarget:
    """What a first visit needs: a local compute target and a few instance types."""
    ensure_default_instance_type()
    for name, resources in SEED_INSTANCE_TYPES.items():
        InstanceType.objects.get_or_create(
            cluster=None, name=name, defaults={"resources": resources}
        )
    compute, _ = ComputeTarget.objects.get_or_create(
        workspace=workspace,
        name="local",
        defaults={"kind": ComputeKind.LOCAL, "description": "Processes on the studio's host."},
    )
    became_available(compute)
    return compute
