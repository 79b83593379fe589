"""Websockets: a deployment's live log (its model servers' and their preparation's lines
from the log store, endpoints.logs). Authorized in `connect` as a job's log is: a
stranger learns nothing, not even that the deployment exists."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from endpoints import logs
from endpoints.models import Deployment, DeploymentLogLine
from studio import access
from studio.ws import LogTailConsumer


@database_sync_to_async
def _visible_deployment_id(user: Any, workspace: str, endpoint: str, name: str) -> int | None:
    if user is None:
        return None
    return (
        Deployment.objects.filter(
            endpoint__workspace__in=access.visible_workspaces(user).filter(name=workspace),
            endpoint__name=endpoint,
            name=name,
        )
        .values_list("id", flat=True)
        .first()
    )


@database_sync_to_async
def _lines(deployment_id: int, after: int, limit: int) -> list[dict[str, object]]:
    rows = DeploymentLogLine.objects.filter(deployment_id=deployment_id, seq__gt=after)
    return [line.as_message() for line in rows.order_by("seq")[:limit]]


class DeploymentLogConsumer(LogTailConsumer):
    """Backlog after `?after=N`, then the live tail, for as long as the deployment lives.
    Each message has `instance` and `container` besides a job line's fields."""

    async def connect(self) -> None:
        kwargs = self.scope["url_route"]["kwargs"]
        found = await _visible_deployment_id(
            self.scope.get("user"), kwargs["workspace"], kwargs["endpoint"], kwargs["name"]
        )
        if found is None:
            await self.close()
            return
        self.deployment_id = found
        self.sent = self.after_param()
        # Join before reading the store: whatever is stored after the read comes by group.
        await self.join(logs.group(found))
        await self.catch_up()

    async def still_allowed(self) -> bool:
        kwargs = self.scope["url_route"]["kwargs"]
        found = await _visible_deployment_id(
            self.scope["user"], kwargs["workspace"], kwargs["endpoint"], kwargs["name"]
        )
        return found == self.deployment_id

    async def stored_lines(self, after: int, limit: int) -> list[dict[str, object]]:
        return await _lines(self.deployment_id, after, limit)
