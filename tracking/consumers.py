"""A run's live metrics: `{"type": "metrics", "keys": [...], "status": ...}` whenever the
run logs points or ends, so a chart reloads what changed instead of polling. Authorized
in `connect`: the run must be in a workspace the user belongs to."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from studio import access
from studio.ws import AccessWatchingConsumer
from tracking import events
from tracking.models import Run


def _visible_run(user: Any, workspace: str, run_id: str) -> bool:
    if user is None:
        return False
    workspaces = access.visible_workspaces(user).filter(name=workspace)
    return Run.objects.filter(run_id=run_id, experiment__workspace__in=workspaces).exists()


# In a worker thread of its own, not the one every socket shares (see jobs.consumers).
_visible = database_sync_to_async(_visible_run, thread_sensitive=False)


class RunMetricsConsumer(AccessWatchingConsumer):
    async def connect(self) -> None:
        kwargs = self.scope["url_route"]["kwargs"]
        if not await _visible(self.scope.get("user"), kwargs["workspace"], kwargs["run_id"]):
            await self.close()
            return
        await self.join(events.run_group(kwargs["run_id"]))

    async def still_allowed(self) -> bool:
        kwargs = self.scope["url_route"]["kwargs"]
        return await _visible(self.scope["user"], kwargs["workspace"], kwargs["run_id"])

    async def run_changed(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "metrics", "keys": message["keys"], "status": message["status"]}
        )
