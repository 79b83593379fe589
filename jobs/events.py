"""The one way anything announces a change to live pages, sockets and the controller.

Messages are published after the transaction that made the change commits, so a
listener that reacts by reading the database sees the change (and a rolled-back change
is never announced).
"""

import asyncio
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

CONTROLLER_GROUP = "controller"
Message = tuple[str, dict[str, Any]]


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


# The web server's event loop, where the channel layer's connections live.
_server_loop: asyncio.AbstractEventLoop | None = None


def use_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    _server_loop = loop


def _runs_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def send_now(*messages: Message) -> None:
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    async def send_all() -> None:
        await asyncio.gather(*(layer.group_send(group, message) for group, message in messages))

    loop = _server_loop
    if loop is not None and loop.is_running() and not _runs_in(loop):
        asyncio.run_coroutine_threadsafe(send_all(), loop).result()
    else:
        # The controller's thread, management commands, tests: asgiref finds their loop.
        async_to_sync(send_all)()


def publish(*messages: Message) -> None:
    """Send after commit, in one hop to the event loop."""
    transaction.on_commit(lambda: send_now(*messages))
