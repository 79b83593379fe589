"""The one way anything announces a change to live pages, sockets and the controller.

Messages are published after the transaction that made the change commits, so a
listener that reacts by reading the database sees the change (and a rolled-back change
is never announced). Apps name their own groups and messages (jobs/events.py); the
core's own are a user's: a change to what they may see.
"""

import asyncio
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

Message = tuple[str, dict[str, Any]]


def user_group(user_id: int) -> str:
    """Every socket a user has open, whatever it shows."""
    return f"user-{user_id}"


def access_changed(user_id: int) -> Message:
    """The user's memberships, tokens or account changed: sockets look again."""
    return (user_group(user_id), {"type": "access.changed"})


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
