"""The one way anything announces a change to live pages, sockets and the controller.

Messages are published after the transaction that made the change commits, so a
listener that reacts by reading the database sees the change.
"""

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

CONTROLLER_GROUP = "controller"


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def workspace_group(workspace_id: int) -> str:
    return f"workspace-{workspace_id}-jobs"


def send_now(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, message)


def publish(group: str, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send_now(group, message))


def wake_controller(job_id: int | None = None, reason: str = "queued") -> None:
    publish(CONTROLLER_GROUP, {"type": "controller.wake", "job": job_id, "reason": reason})
