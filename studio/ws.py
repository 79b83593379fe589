"""Websockets: the API token in the Authorization header, as on the API, and sockets
that stop serving a user who lost access while they were open."""

import abc
import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.base import SessionBase
from django.utils import timezone

from studio import events
from studio.auth import key_from_header, user_for_key
from studio.models import ApiToken, hash_token


def _authorization(scope: dict[str, Any]) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return bytes(value)
    return None


class TokenAuthMiddleware:
    """Sets scope["user"] from a bearer token; the session user stays when there is none."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = key_from_header(_authorization(scope))
        if key is not None:
            user = await database_sync_to_async(user_for_key)(key)
            # None: a bad token is no login at all. The hash lets the socket check later
            # that the token was not revoked meanwhile.
            scope = dict(scope, user=user, token_hash=hash_token(key))
        return await self.inner(scope, receive, send)


class OriginOrTokenValidator:
    """Browsers (cookies) must come from an allowed origin; token clients carry no cookie,
    so a cross-site page cannot ride on them, and the CLI sends no Origin."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.validated = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if key_from_header(_authorization(scope)) is not None:
            return await self.inner(scope, receive, send)
        return await self.validated(scope, receive, send)


@database_sync_to_async
def _signed_in_still(user_id: int, token_hash: str | None, session: SessionBase | None) -> bool:
    """The account is active and what it signed in with (token or session) still holds."""
    if token_hash is not None:
        return (
            ApiToken.objects.filter(key_hash=token_hash, user_id=user_id, user__is_active=True)
            .exclude(expires_at__lte=timezone.now())
            .exists()
        )
    if not get_user_model().objects.filter(pk=user_id, is_active=True).exists():
        return False
    key = session.session_key if session is not None else None
    return key is not None and session is not None and session.exists(key)


class AccessWatchingConsumer(AsyncJsonWebsocketConsumer, metaclass=abc.ABCMeta):
    """A socket that closes (code 4403) once its user may no longer see what it shows.

    It looks again when told (studio.events.access_changed: a membership, token or
    account changed through the studio) and every STUDIO_WS_RECHECK_SECONDS (changes made
    elsewhere, such as the Django admin, and sessions that ended)."""

    @abc.abstractmethod
    async def still_allowed(self) -> bool:
        """Whether the user may still see what this socket shows (membership)."""

    async def join(self, group: str) -> None:
        """Accept the socket as a member of `group` (joined first: whatever is sent to it
        from now on arrives) and start watching access; `disconnect` leaves both."""
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.watch_access()

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def watch_access(self) -> None:
        """Call once the socket is accepted (`join` does)."""
        user = self.scope["user"]
        self._user_id = user.pk
        self._access_group = events.user_group(user.pk)
        await self.channel_layer.group_add(self._access_group, self.channel_name)
        self._watcher = asyncio.create_task(self._recheck_every())

    async def _recheck_every(self) -> None:
        while True:
            await asyncio.sleep(settings.STUDIO_WS_RECHECK_SECONDS)
            await self.access_changed({})

    async def access_changed(self, message: dict[str, Any]) -> None:
        allowed = (
            await _signed_in_still(
                self._user_id, self.scope.get("token_hash"), self.scope.get("session")
            )
            and await self.still_allowed()
        )
        if not allowed:
            await self.close(code=4403)
            await self.stop_watching()

    async def stop_watching(self) -> None:
        watcher = getattr(self, "_watcher", None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if hasattr(self, "_access_group"):
            await self.channel_layer.group_discard(self._access_group, self.channel_name)
            del self._access_group


class LogTailConsumer(AccessWatchingConsumer):
    """A stored log's socket: the backlog after `?after=N`, then the live tail.

    The store is the truth and the group the fast path: lines from the group that were
    already sent are dropped, and a gap (a group message lost or ahead) is filled from
    the store, so the client sees every seq once, in order. Subclasses authorize and
    join their group in `connect`, set `sent` from `after_param()`, and read the store in
    `stored_lines`; the group sends `log.lines` messages (`first`, encoded `texts`).
    """

    BACKLOG_CHUNK = 1000
    sent = 0
    ended = False

    @abc.abstractmethod
    async def stored_lines(self, after: int, limit: int) -> list[dict[str, object]]:
        """Up to `limit` stored lines after seq `after`, as messages."""

    def after_param(self) -> int:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            return max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            return 0

    async def catch_up(self, until: int | None = None) -> None:
        """Send stored lines after the last one sent (up to `until`, when given)."""
        while until is None or self.sent < until:
            lines = await self.stored_lines(self.sent, self.BACKLOG_CHUNK)
            if not lines:
                return
            for line in lines:
                await self.send_json(line)
                self.sent = int(str(line["seq"]))
            if len(lines) < self.BACKLOG_CHUNK:
                return

    async def log_lines(self, message: dict[str, Any]) -> None:
        """A batch of consecutive lines from `first`, already encoded."""
        if self.ended:
            return
        first: int = message["first"]
        if first > self.sent + 1:
            await self.catch_up(until=first - 1)
        for seq, text in enumerate(message["texts"], start=first):
            if seq == self.sent + 1:
                await self.send(text_data=text)
                self.sent = seq
