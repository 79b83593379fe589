"""Websockets: a job's live log, and a workspace's job status changes.

Both authorize in `connect` (session or API token, then workspace membership) and
refuse the handshake otherwise, so a stranger learns nothing, not even that a job exists.
Both close (code 4403) once their user is no longer a member (studio.ws).
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from jobs import events
from jobs.models import Job, LogLine
from studio import access
from studio.ws import AccessWatchingConsumer, LogTailConsumer


def _query(func: Any) -> Any:
    """Database work of a socket, in a worker thread of its own rather than the one
    thread shared by every socket: a crowd connecting at once must not queue behind
    each other's queries."""
    return database_sync_to_async(func, thread_sensitive=False)


@_query
def _member_workspace_id(user: Any, workspace: str) -> int | None:
    if user is None:
        return None
    return (
        access.visible_workspaces(user).filter(name=workspace).values_list("id", flat=True).first()
    )


@_query
def _visible_job_id(user: Any, workspace: str, name: str) -> int | None:
    """The job's id if the user may see its workspace; one query."""
    if user is None:
        return None
    return (
        Job.objects.filter(
            workspace__in=access.visible_workspaces(user).filter(name=workspace), name=name
        )
        .values_list("id", flat=True)
        .first()
    )


@_query
def _lines(job_id: int, after: int, limit: int) -> list[dict[str, object]]:
    rows = LogLine.objects.filter(job_id=job_id, seq__gt=after).order_by("seq")[:limit]
    return [line.as_message() for line in rows]


@_query
def _progress(job_id: int) -> tuple[str, int]:
    status, last_seq = Job.objects.filter(pk=job_id).values_list("status", "last_seq").get()
    return status, last_seq


class JobLogConsumer(LogTailConsumer):
    """Backlog after `?after=N`, then the live tail (studio.ws.LogTailConsumer), then
    `{"type": "end", "status": ...}` once the job has ended."""

    async def connect(self) -> None:
        kwargs = self.scope["url_route"]["kwargs"]
        job_id = await _visible_job_id(self.scope.get("user"), kwargs["workspace"], kwargs["name"])
        if job_id is None:
            await self.close()
            return
        self.sent = self.after_param()
        self.job_id = job_id
        # Join before reading the store: whatever is stored after the read comes by group.
        await self.join(events.job_group(job_id))
        status, last_seq = await _progress(self.job_id)
        if last_seq > self.sent:
            await self.catch_up()
        if status in ("Completed", "Failed", "Canceled"):  # its lines are all stored by now
            await self.end(status)

    async def still_allowed(self) -> bool:
        kwargs = self.scope["url_route"]["kwargs"]
        user = self.scope["user"]
        return await _visible_job_id(user, kwargs["workspace"], kwargs["name"]) is not None

    async def stored_lines(self, after: int, limit: int) -> list[dict[str, object]]:
        return await _lines(self.job_id, after, limit)

    async def job_end(self, message: dict[str, Any]) -> None:
        await self.catch_up()  # every line is stored before the end is announced
        await self.end(message["status"])

    async def end(self, status: str) -> None:
        if self.ended:
            return
        self.ended = True
        await self.send_json({"type": "end", "status": status})
        await self.close()
        await self.stop_watching()


class WorkspaceJobsConsumer(AccessWatchingConsumer):
    """`{"type": "status", "name": ..., "status": ...}` for every job state change."""

    async def connect(self) -> None:
        workspace = self.scope["url_route"]["kwargs"]["workspace"]
        workspace_id = await _member_workspace_id(self.scope.get("user"), workspace)
        if workspace_id is None:
            await self.close()
            return
        await self.join(events.workspace_group(workspace_id))

    async def still_allowed(self) -> bool:
        workspace = self.scope["url_route"]["kwargs"]["workspace"]
        return await _member_workspace_id(self.scope["user"], workspace) is not None

    async def job_status(self, message: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "status", "name": message["name"], "status": message["status"]}
        )
