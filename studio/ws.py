"""Websocket middleware: the API token in the Authorization header, as on the API."""

from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator

from studio.auth import key_from_header, user_for_key


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
            scope = dict(scope, user=user)  # None: a bad token is no login at all
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
