"""The log websocket: authorization in connect, backlog, resume, live tail, end message."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from compute.backends import LogRecord
from jobs import services
from jobs.models import Job, Status
from studio.asgi import application
from tests.conftest import token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db_thread")]
HELLO = "command: echo hi\n"


def socket(
    path: str, token: str | None = None, origin: bytes | None = None
) -> WebsocketCommunicator:
    headers = []
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if origin:
        headers.append((b"origin", origin))
    return WebsocketCommunicator(application, path, headers=headers)


async def make_job(workspace, user, lines: int = 0) -> Job:
    job = await sync_to_async(services.submit_yaml)(workspace, user, HELLO)
    if lines:
        await add_lines(job, 1, lines)
    return job


async def add_lines(job: Job, first: int, last: int) -> None:
    records = [
        LogRecord(ts=1700000000.0 + i, stream="stdout", line=f"line {i}")
        for i in range(first, last + 1)
    ]
    await sync_to_async(services.append_logs)(job, records, {"offset": last})


async def end(job: Job, status: str = Status.COMPLETED) -> None:
    for step in (Status.PREPARING, Status.RUNNING, Status.FINALIZING, status):
        await sync_to_async(services.transition)(job, step)


def logs_path(job: Job) -> str:
    return f"/ws/workspaces/demo/jobs/{job.name}/logs/"


async def receive_all(ws: WebsocketCommunicator) -> list[dict]:
    messages = []
    while True:
        message = await ws.receive_json_from(timeout=5)
        messages.append(message)
        if message.get("type") == "end":
            return messages


async def test_backlog_then_end_for_a_finished_job(workspace, people):
    job = await make_job(workspace, people.contributor, lines=3)
    await end(job)
    ws = socket(logs_path(job), await sync_to_async(token_for)(people.reader))
    connected, _ = await ws.connect()
    assert connected
    messages = await receive_all(ws)
    assert [m.get("seq") for m in messages[:-1]] == [1, 2, 3]
    assert messages[0]["stream"] == "stdout" and messages[0]["line"] == "line 1"
    assert messages[0]["ts"].startswith("2023-11-14T22:13:21")
    assert messages[-1] == {"type": "end", "status": "Completed"}
    await ws.disconnect()


async def test_resume_after_seq_has_no_gap_and_no_duplicate(workspace, people):
    job = await make_job(workspace, people.contributor, lines=5)
    await end(job, Status.FAILED)
    ws = socket(logs_path(job) + "?after=3", await sync_to_async(token_for)(people.reader))
    assert (await ws.connect())[0]
    messages = await receive_all(ws)
    assert [m.get("seq") for m in messages[:-1]] == [4, 5]
    assert messages[-1] == {"type": "end", "status": "Failed"}


async def test_live_tail_after_backlog(workspace, people):
    job = await make_job(workspace, people.contributor, lines=2)
    ws = socket(logs_path(job), await sync_to_async(token_for)(people.reader))
    assert (await ws.connect())[0]
    assert [(await ws.receive_json_from())["seq"] for _ in range(2)] == [1, 2]
    await add_lines(job, 3, 4)
    assert [(await ws.receive_json_from())["seq"] for _ in range(2)] == [3, 4]
    await end(job)
    assert await ws.receive_json_from() == {"type": "end", "status": "Completed"}
    await ws.disconnect()


async def test_a_lost_group_message_is_filled_from_the_store(workspace, people):
    job = await make_job(workspace, people.contributor, lines=1)
    ws = socket(logs_path(job), await sync_to_async(token_for)(people.reader))
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from())["seq"] == 1
    # Lines 2-3 are stored without reaching the group (as when a channel overflows) ...
    await sync_to_async(_store_silently)(job, [2, 3])
    # ... and line 4 arrives by the group: the consumer fills 2-3 from the store first.
    await add_lines(job, 4, 4)
    assert [(await ws.receive_json_from())["seq"] for _ in range(3)] == [2, 3, 4]
    await ws.disconnect()


def _store_silently(job: Job, seqs: list[int]) -> None:
    from datetime import UTC, datetime

    from jobs.models import LogLine

    LogLine.objects.bulk_create(
        [
            LogLine(job=job, seq=s, ts=datetime.now(UTC), stream="stdout", line=f"line {s}")
            for s in seqs
        ]
    )
    Job.objects.filter(pk=job.pk).update(last_seq=max(seqs))
    job.last_seq = max(seqs)


async def test_strangers_and_anonymous_are_refused(workspace, people):
    job = await make_job(workspace, people.contributor, lines=1)
    for token in (await sync_to_async(token_for)(people.stranger), None, "kst_bogus"):
        ws = socket(logs_path(job), token, origin=b"http://127.0.0.1")
        connected, _ = await ws.connect()
        assert not connected
    ws = socket(
        "/ws/workspaces/demo/jobs/no-such-job/logs/", await sync_to_async(token_for)(people.reader)
    )
    assert not (await ws.connect())[0]


async def test_browser_session_from_a_foreign_origin_is_refused(workspace, people, client):
    job = await make_job(workspace, people.contributor)
    await sync_to_async(client.force_login)(people.reader)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    for origin, expected in ((b"http://evil.example", False), (b"http://127.0.0.1:8000", True)):
        ws = WebsocketCommunicator(
            application, logs_path(job), headers=[(b"cookie", cookie), (b"origin", origin)]
        )
        assert (await ws.connect())[0] is expected
        await ws.disconnect()


async def test_workspace_socket_carries_status_changes(workspace, people):
    ws = socket("/ws/workspaces/demo/jobs/", await sync_to_async(token_for)(people.reader))
    assert (await ws.connect())[0]
    job = await make_job(workspace, people.contributor)
    assert await ws.receive_json_from() == {"type": "status", "name": job.name, "status": "Queued"}
    await ws.disconnect()
    stranger = socket("/ws/workspaces/demo/jobs/", await sync_to_async(token_for)(people.stranger))
    assert not (await stranger.connect())[0]


async def closed_with(ws: WebsocketCommunicator, timeout: float = 5) -> int:
    """The close code, skipping any messages still on their way."""
    while True:
        output = await ws.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output.get("code", 1000)


@pytest.mark.parametrize("kind", ["logs", "status"])
async def test_a_removed_member_stops_receiving_at_once(workspace, people, kind):
    job = await make_job(workspace, people.owner)
    path = logs_path(job) if kind == "logs" else "/ws/workspaces/demo/jobs/"
    ws = socket(path, await sync_to_async(token_for)(people.reader))
    connected, _ = await ws.connect()
    assert connected
    from studio import services as studio_services
    from studio.models import Membership

    membership = await Membership.objects.aget(user=people.reader)
    await sync_to_async(studio_services.remove_member)(membership)
    assert await closed_with(ws) == 4403


async def test_access_is_checked_again_periodically(workspace, people, settings):
    """A change made behind the studio's back (the Django admin, a revoked token) is
    noticed within STUDIO_WS_RECHECK_SECONDS."""
    settings.STUDIO_WS_RECHECK_SECONDS = 0.2
    from studio.models import ApiToken, Membership

    token = await sync_to_async(token_for)(people.reader)
    ws = socket("/ws/workspaces/demo/jobs/", token)
    assert (await ws.connect())[0]
    # Still a member: the socket stays open across several checks.
    assert await ws.receive_nothing(timeout=0.7)
    await Membership.objects.filter(user=people.reader).adelete()  # no event sent
    assert await closed_with(ws) == 4403

    token = await sync_to_async(token_for)(people.contributor)
    ws = socket("/ws/workspaces/demo/jobs/", token)
    assert (await ws.connect())[0]
    await ApiToken.objects.filter(user=people.contributor).adelete()
    assert await closed_with(ws) == 4403


async def test_a_browser_socket_lives_as_long_as_its_session(workspace, people, settings):
    settings.STUDIO_WS_RECHECK_SECONDS = 0.2
    from django.contrib.sessions.models import Session
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(people.reader)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    ws = WebsocketCommunicator(
        application,
        "/ws/workspaces/demo/jobs/",
        headers=[(b"cookie", cookie), (b"origin", b"http://localhost")],
    )
    assert (await ws.connect())[0]
    assert await ws.receive_nothing(timeout=0.7)
    await Session.objects.all().adelete()  # signed out everywhere
    assert await closed_with(ws) == 4403


async def test_a_runs_socket_says_when_points_arrive_and_when_it_ends(workspace, people):
    """What a Metrics tab listens to: the keys logged (after commit), then the end; a
    stranger and another workspace's run get nothing."""
    from tracking import services as tracking
    from tracking.models import Experiment, Run

    experiment = await sync_to_async(Experiment.objects.create)(workspace=workspace, name="e")
    run = await sync_to_async(Run.objects.create)(experiment=experiment)
    path = f"/ws/workspaces/demo/runs/{run.run_id}/metrics/"
    for token in (await sync_to_async(token_for)(people.stranger), None):
        assert not (await socket(path, token, origin=b"http://127.0.0.1").connect())[0]
    reader = await sync_to_async(token_for)(people.reader)
    assert not (await socket("/ws/workspaces/demo/runs/nope/metrics/", reader).connect())[0]
    ws = socket(path, reader)
    assert (await ws.connect())[0]
    points = [{"key": k, "value": 1.0, "timestamp": 1, "step": 0} for k in ("loss", "acc")]
    await sync_to_async(tracking.log_batch)(run, points, [], [])
    assert await ws.receive_json_from(timeout=5) == {
        "type": "metrics", "keys": ["acc", "loss"], "status": ""
    }  # fmt: skip
    await sync_to_async(tracking.update_run)(run, "FINISHED", 2, None)
    assert (await ws.receive_json_from(timeout=5))["status"] == "FINISHED"
    await ws.disconnect()
