"""The inference router: `POST /api/v1/endpoint/<name>/score`, as Azure's Kubernetes
router serves it. It checks the caller's key, picks a deployment (by the traffic split,
or the `azureml-model-deployment` header), waits for room in it, forwards the request to
one of its instances and answers with Azure's status codes:

- 401: no key, or a wrong one (nothing reaches the model);
- 404: no such endpoint, or no deployment takes traffic (or the one the header names);
- 502: the scoring script's `run()` raised, or no instance could be reached;
- 503 (429 on `type: managed`): more requests than the deployment's instances x
  `max_concurrent_requests_per_instance` could take within `max_queue_wait_ms`;
- 504: no answer within `request_timeout_ms`.

Every answer says which deployment gave it (`azureml-model-deployment`). Mirrored
traffic is copied to its deployment and its answers dropped.

It is a plain ASGI app (`app`), not a Django view: the studio's ASGI entry sends it
`/api/v1/endpoint/...` ahead of Django, and `manage.py runrouter` serves it alone. Each
endpoint's routing table is kept in memory and read again from the database in the
background once it is a second old, one read at a time (an endpoint or deployment saved
through its model in this process drops it at once; the runner's switch of instances,
an update, reaches it within about a second, and a request meeting a replaced instance's
closed port is retried), so a request waits on no query. In-flight counts are the
process's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from asgiref.sync import sync_to_async
from django.db import close_old_connections, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from yarl import URL

from endpoints import kube, services
from endpoints.models import Deployment, Endpoint, State
from endpoints.tokens import SERVER_KEY_HEADER, server_key
from endpoints.traffic import RECORDER

log = logging.getLogger(__name__)

DEPLOYMENT_HEADER = "azureml-model-deployment"
TABLE_SECONDS = 1.0  # how stale a routing table may be (changed by another process)
MAX_BODY = 100 * 1024 * 1024  # Azure's limit on a scoring request
UNAUTHORIZED = "Give the endpoint's key (or token) as Authorization: Bearer <key>."
HEALTH = "/api/v1/endpoint-router/healthy"
PATH = re.compile(r"^/api/v1/endpoint/([^/]+)/(score|swagger\.json)$")


@dataclass(frozen=True)
class Route:
    """One deployment as the router sees it."""

    pk: int
    name: str
    type: str
    urls: tuple[str, ...]
    timeout: float  # seconds
    queue_wait: float
    room: int  # instances x max concurrent requests per instance
    replicas: int
    # A deployment on a cluster is reached through its API server's service proxy, with
    # the cluster's credentials: (headers, ssl) from endpoints.kube.access.
    headers: tuple[tuple[str, str], ...] = ()
    ssl: Any = True
    server_key: str = ""  # what its model servers answer to (endpoints.tokens)
    # Made once per table rather than per request: each instance's /score, parsed, and
    # the request's timeout.
    scoring: tuple[URL, ...] = field(init=False, repr=False, compare=False)
    client_timeout: aiohttp.ClientTimeout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scoring", tuple(URL(u + "/score") for u in self.urls))
        object.__setattr__(self, "client_timeout", aiohttp.ClientTimeout(total=self.timeout))


@dataclass(frozen=True)
class Table:
    """One endpoint's routing: who may call, and where requests go."""

    pk: int
    auth_mode: str
    key_digests: tuple[bytes, ...]
    traffic: tuple[tuple[str, int], ...]
    mirror: tuple[tuple[str, int], ...]
    routes: dict[str, Route]
    token_key: str = ""  # what its aml_token tokens are signed with
    loaded_at: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        """What a router in a cluster is sent (endpoints.api.router): keys as digests
        only; its deployments' in-cluster addresses."""
        return {
            "pk": self.pk,
            "auth_mode": self.auth_mode,
            "key_digests": [d.hex() for d in self.key_digests],
            "token_key": self.token_key,
            "traffic": dict(self.traffic),
            "mirror": dict(self.mirror),
            "routes": [
                {"pk": r.pk, "name": r.name, "type": r.type, "urls": list(r.urls),
                 "timeout": r.timeout, "queue_wait": r.queue_wait, "room": r.room,
                 "replicas": r.replicas, "server_key": r.server_key}
                for r in self.routes.values()
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        routes = [Route(**{**r, "urls": tuple(r["urls"])}) for r in data["routes"]]
        return cls(
            pk=int(data["pk"]),
            auth_mode=str(data["auth_mode"]),
            key_digests=tuple(bytes.fromhex(d) for d in data["key_digests"]),
            traffic=tuple((str(n), int(s)) for n, s in data["traffic"].items()),
            mirror=tuple((str(n), int(s)) for n, s in data["mirror"].items()),
            routes={r.name: r for r in routes},
            token_key=str(data["token_key"]),
        )


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    deployment: str = ""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load(name: str) -> Table | None:
    """The endpoint's table from the database, from a router's thread."""
    close_old_connections()
    try:
        return table_of(name)
    finally:
        close_old_connections()


def table_of(name: str, cluster_id: int | None = None) -> Table | None:
    """The endpoint's table (two queries). With `cluster_id`, as a router inside that
    cluster sees it: only an endpoint on that cluster, reached at its Services' cluster
    addresses."""
    endpoint = (
        Endpoint.objects.filter(name=name)
        .exclude(state=State.DELETING)
        .select_related("compute__cluster")
        .first()
    )
    if endpoint is None:
        return None
    if cluster_id is not None and endpoint.compute.cluster_id != cluster_id:
        return None
    routes = {}
    for d in endpoint.deployments.exclude(state=State.DELETING):
        urls = tuple(
            i.get("in_cluster", "") if cluster_id is not None else i["url"] for i in d.instances
        )
        if not urls or not all(urls):
            continue
        requests = d.document.get("request_settings") or {}
        per = int(requests.get("max_concurrent_requests_per_instance", 1))
        reach = (
            kube.access(endpoint.compute)
            if cluster_id is None and any(i.get("kubernetes") for i in d.instances)
            else kube.Access((), True)
        )
        routes[d.name] = Route(
            pk=d.pk,
            name=d.name,
            type=d.type,
            urls=urls,
            timeout=int(requests.get("request_timeout_ms", 5000)) / 1000,
            queue_wait=int(requests.get("max_queue_wait_ms", 500)) / 1000,
            room=sum(int(i.get("replicas", 1)) for i in d.instances) * per,
            replicas=sum(int(i.get("replicas", 1)) for i in d.instances),
            headers=reach.headers,
            ssl=reach.ssl,
            server_key=server_key(d.pk),
        )
    keys = services.keys_of(endpoint).values() if endpoint.auth_mode == "key" else ()
    return Table(
        pk=endpoint.pk,
        auth_mode=endpoint.auth_mode,
        key_digests=tuple(_digest(k) for k in keys if k),
        traffic=tuple((n, s) for n, s in endpoint.traffic.items() if s > 0),
        mirror=tuple(endpoint.mirror_traffic.items()),
        routes=routes,
        token_key=services.token_key(endpoint.pk) if endpoint.auth_mode == "aml_token" else "",
    )


def _answer(status: int, message: str, deployment: str = "") -> Answer:
    return Answer(status, json.dumps({"message": message}).encode(), deployment=deployment)


class TablesAway(Exception):
    """No routing table can be read now, and none was read before."""


@dataclass
class PerLoop:
    """What belongs to one event loop: the pooled client, the deployments' slots and the
    tables being read."""

    http: aiohttp.ClientSession
    slots: dict[tuple[int, int], asyncio.Semaphore] = field(default_factory=dict)
    # By endpoint: (the count of forgets when it began, the read).
    reading: dict[str, tuple[int, asyncio.Future[Table | None]]] = field(default_factory=dict)


class Router:
    def __init__(self) -> None:
        # Where tables and a replaced instance's successors come from: the database, or
        # the studio's API for a router inside a cluster (endpoints.remote).
        self.source: Callable[[str], Table | None] = load
        self.urls_of: Callable[[int], list[str]] = _urls
        self.tables: dict[str, Table] = {}
        self.mirrored: set[asyncio.Future[Answer]] = set()
        self.turns = itertools.count()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PerLoop] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._forgotten = itertools.count(1)  # how many times a table was dropped
        self._last_forgotten = 0

    def _here(self) -> PerLoop:
        loop = asyncio.get_running_loop()
        found = self._loops.get(loop)
        if found is None:
            # aiohttp rather than httpx here: a third of the cost per request (measured:
            # 0.36 ms against 1.0 ms on loopback), and the router's goal is under 1 ms.
            connector = aiohttp.TCPConnector(limit=1024, limit_per_host=256)
            found = self._loops[loop] = PerLoop(aiohttp.ClientSession(connector=connector))
        return found

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._here().http

    async def close(self) -> None:
        """Close this event loop's connections (the server stops, or a one-off call ends)."""
        mine = self._loops.pop(asyncio.get_running_loop(), None)
        if mine is not None:
            await mine.http.close()

    async def handle_once(self, *args: Any, **kwargs: Any) -> Answer:
        """`handle`, from a loop made for this call alone (a sync view's async_to_sync)."""
        try:
            return await self.handle(*args, **kwargs)
        finally:
            await self.close()

    def forget(self, name: str) -> None:
        with self._lock:
            self.tables.pop(name, None)
            self._last_forgotten = next(self._forgotten)

    async def table(self, name: str) -> Table | None:
        """The endpoint's routing. A table older than TABLE_SECONDS still routes this
        request while it is read again in the background: no request waits on the
        database once the endpoint has been routed. Requests that find none wait on one
        read together (under load, a read per request would be hundreds a second)."""
        found = self.tables.get(name)
        if found is None:
            # Shielded: a caller that goes away does not stop the others' read.
            return await asyncio.shield(self._reading(name))
        if time.monotonic() - found.loaded_at >= TABLE_SECONDS:
            self._reading(name)
        return found

    def _reading(self, name: str) -> asyncio.Future[Table | None]:
        """The read of the endpoint's table under way in this loop, or a new one (also
        when a change was saved since that one began: it may read the state before)."""
        reading = self._here().reading
        under_way = reading.get(name)
        if under_way is None or under_way[0] != self._last_forgotten:
            task = asyncio.ensure_future(self._read(name))
            under_way = reading[name] = (self._last_forgotten, task)

            def done(_: asyncio.Future[Table | None]) -> None:
                if reading.get(name) is under_way:
                    del reading[name]
                if not task.cancelled():
                    task.exception()  # retrieved: a failure nobody awaits was logged

            task.add_done_callback(done)
        return under_way[1]

    async def _read(self, name: str) -> Table | None:
        """One read of the table, kept unless a change was saved meanwhile."""
        before = self._last_forgotten
        try:
            found = await sync_to_async(self.source, thread_sensitive=False)(name)
        except Exception as exc:
            # The database (or the studio) is away: route by the table last read, if any.
            log.warning("reading the routing of %s failed: %s", name, exc)
            stale = self.tables.get(name)
            if stale is None:
                raise TablesAway from exc
            return stale
        with self._lock:
            if found is None:
                self.tables.pop(name, None)
            elif self._last_forgotten == before:
                self.tables[name] = found
            # else a change was saved while it loaded: it may be the state before, so it
            # serves this request only and the next one loads again
        return found

    def authorized(self, table: Table, authorization: str) -> bool:
        if not authorization.lower().startswith("bearer "):
            return False
        given = authorization[7:].strip()
        if table.auth_mode == "aml_token":
            return services.token_valid_for(table.pk, table.token_key, given)
        digest = _digest(given)
        return any(hmac.compare_digest(digest, d) for d in table.key_digests)

    @staticmethod
    def choose(table: Table, named: str) -> str | None:
        if named:
            return named if named in table.routes else None
        if not table.traffic:
            return None
        pick = random.uniform(0, sum(share for _, share in table.traffic))  # noqa: S311
        for name, share in table.traffic:
            pick -= share
            if pick <= 0:
                return name
        return table.traffic[-1][0]

    async def handle(
        self,
        name: str,
        authorization: str,
        named: str,
        content_type: str,
        body: bytes,
        *,
        trusted: bool = False,
    ) -> Answer:
        """One scoring request (`trusted`: the studio's own test console, whose user was
        checked already)."""
        try:
            table = await self.table(name)
        except TablesAway:
            return _answer(503, "The router cannot read the endpoint's routing now; retry.")
        if table is None:
            return _answer(404, f"No endpoint named {name}.")
        if not trusted and not self.authorized(table, authorization):
            return _answer(
                401, "Give the endpoint's key (or token) as Authorization: Bearer <key>."
            )
        chosen = self.choose(table, named)
        if chosen is None:
            if named:
                return _answer(404, f"The endpoint has no running deployment named {named}.")
            return _answer(404, "No deployment of the endpoint takes traffic; set its traffic.")
        route = table.routes.get(chosen)
        if route is None:
            return _answer(502, f"Deployment {chosen} has no instance running.", chosen)
        if not named:
            for mirrored, share in table.mirror:
                target = table.routes.get(mirrored)
                if target is not None and random.uniform(0, 100) < share:  # noqa: S311
                    copy = asyncio.ensure_future(self.forward(target, "/score", body, content_type))
                    self.mirrored.add(copy)  # kept until done: a task nobody holds may vanish
                    copy.add_done_callback(self.mirrored.discard)
        # Counted from here (in flight or waiting for room) for the charts and the
        # autoscaler: what the deployment was asked, whatever it answered.
        started = time.monotonic()
        RECORDER.started(route.pk, route.replicas)
        status = 500  # unless it answers: the router itself failed
        try:
            answer = await self._score(route, body, content_type)
            status = answer.status
            return answer
        finally:
            RECORDER.finished(route.pk, status, time.monotonic() - started)

    async def _score(self, route: Route, body: bytes, content_type: str) -> Answer:
        """Wait for room in the deployment (within max_queue_wait_ms), then forward."""
        slots = self._here().slots
        slot = slots.get((route.pk, route.room))
        if slot is None:
            slot = slots[(route.pk, route.room)] = asyncio.Semaphore(route.room)
        try:
            if slot.locked():  # full: wait for room (wait_for costs a task; only here)
                await asyncio.wait_for(slot.acquire(), route.queue_wait)
            else:
                await slot.acquire()  # room now: returns without suspending
        except TimeoutError:
            return _answer(
                429 if route.type == "managed" else 503,
                "The deployment is busy: more requests than its instances take "
                "(max_concurrent_requests_per_instance, max_queue_wait_ms).",
                route.name,
            )
        try:
            return await self.forward(route, "/score", body, content_type)
        finally:
            slot.release()

    async def forward(self, route: Route, path: str, body: bytes, content_type: str) -> Answer:
        """One request to one of the deployment's instances, within its timeout."""
        turn = next(self.turns)
        index = turn % len(route.urls)
        first = route.scoring[index] if path == "/score" else URL(route.urls[index] + path)
        try:
            try:
                return await self._call(route, first, body, content_type)
            except aiohttp.ClientConnectorError:
                # Nothing was sent: an instance a rollout just replaced. Once more, on the
                # instances the deployment has now.
                fresh = await sync_to_async(self.urls_of, thread_sensitive=False)(route.pk)
                if not fresh:
                    raise
                again = URL(fresh[turn % len(fresh)] + path)
                return await self._call(route, again, body, content_type)
        except TimeoutError:
            return _answer(
                504,
                f"The deployment did not answer within "
                f"{int(route.timeout * 1000)} ms (request_timeout_ms).",
                route.name,
            )
        except aiohttp.ClientError as exc:
            return _answer(502, f"The deployment could not be reached: {exc}", route.name)

    async def _call(self, route: Route, url: URL, body: bytes, content_type: str) -> Answer:
        timeout = route.client_timeout
        headers = dict(route.headers)
        headers[SERVER_KEY_HEADER] = route.server_key
        if url.path.endswith("/swagger.json"):
            request = self.http.get(url, headers=headers, timeout=timeout, ssl=route.ssl)
        else:
            headers["Content-Type"] = content_type
            request = self.http.post(
                url, data=body, headers=headers, timeout=timeout, ssl=route.ssl
            )
        async with request as answer:
            content = await answer.read()
            status = 502 if answer.status >= 500 else answer.status
            kind = answer.headers.get("Content-Type", "application/json")
        return Answer(status, content, kind, route.name)


def _urls(pk: int) -> list[str]:
    close_old_connections()
    found = Deployment.objects.filter(pk=pk).values_list("instances", flat=True).first() or []
    return [i["url"] for i in found]


ROUTER = Router()


@receiver(post_save, sender=Endpoint)
@receiver(post_delete, sender=Endpoint)
def _endpoint_changed(sender: Any, instance: Endpoint, **kwargs: Any) -> None:
    # Now, and once committed: a table loaded in between read the state before.
    ROUTER.forget(instance.name)
    transaction.on_commit(lambda: ROUTER.forget(instance.name))


@receiver(post_save, sender=Deployment)
@receiver(post_delete, sender=Deployment)
def _deployment_changed(sender: Any, instance: Deployment, **kwargs: Any) -> None:
    name = Endpoint.objects.filter(pk=instance.endpoint_id).values_list("name", flat=True).first()
    if name:
        ROUTER.forget(name)
        transaction.on_commit(lambda: ROUTER.forget(name))


async def _read(receive: Any) -> bytes | None:
    """The body, or None past MAX_BODY."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Any, answer: Answer) -> None:
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    if answer.deployment:
        headers.append((DEPLOYMENT_HEADER.encode(), answer.deployment.encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The router as an ASGI app: /api/v1/endpoint/<name>/score (and /swagger.json)."""
    if scope.get("path") == HEALTH:  # the router's own readiness probe
        await _send(send, Answer(200, b'{"status": "ok"}'))
        return
    match = PATH.match(scope.get("path", ""))
    if match is None:
        await _send(send, _answer(404, "Score at /api/v1/endpoint/<name>/score."))
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    name, what = match.group(1), match.group(2)
    if what == "swagger.json":
        await _send(send, await _swagger(name, headers.get("authorization", "")))
        return
    if scope.get("method") != "POST":
        await _send(send, _answer(405, "Score with POST."))
        return
    body = await _read(receive)
    if body is None:
        await _send(send, _answer(413, "The request is larger than 100 MB."))
        return
    answer = await ROUTER.handle(
        name,
        headers.get("authorization", ""),
        headers.get(DEPLOYMENT_HEADER, ""),
        headers.get("content-type", "application/json"),
        body,
    )
    await _send(send, answer)


async def _swagger(name: str, authorization: str) -> Answer:
    try:
        table = await ROUTER.table(name)
    except TablesAway:
        return _answer(503, "The router cannot read the endpoint's routing now; retry.")
    if table is None:
        return _answer(404, f"No endpoint named {name}.")
    if not ROUTER.authorized(table, authorization):
        return _answer(401, UNAUTHORIZED)
    chosen = ROUTER.choose(table, "") or next(iter(table.routes), None)
    if chosen is None or chosen not in table.routes:
        return _answer(404, "No deployment of the endpoint is running.")
    return await ROUTER.forward(table.routes[chosen], "/swagger.json", b"", "application/json")
