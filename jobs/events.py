"""Jobs' channel groups and messages; sent with studio.events.publish after commit."""

from typing import Any

from studio.events import Message, publish, send_now

__all__ = ["Message", "publish", "send_now"]

CONTROLLER_GROUP = "controller"


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def workspace_group(workspace_id: int) -> str:
    return f"workspace-{workspace_id}-jobs"


def status_message(job: Any) -> Message:
    return (
        workspace_group(job.workspace_id),
        {"type": "job.status", "name": job.name, "status": job.status},
    )


def wake_message(job_id: int | None = None, reason: str = "queued") -> Message:
    return (CONTROLLER_GROUP, {"type": "controller.wake", "job": job_id, "reason": reason})
