"""The process kubelet's view of the API server: JSON requests under one identity (a
client certificate), and informers (list, then watch from that resourceVersion; a watch
that ends is resumed, a `410 Gone` lists again), as client-go's reflector does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import urllib3

from devcluster.pki import Pair


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


class Api:
    def __init__(self, server: str, ca: str, client: Pair) -> None:
        self.server = server
        self.pool = urllib3.PoolManager(
            maxsize=16,
            block=False,
            ca_certs=ca,
            cert_file=str(client.cert),
            key_file=str(client.key),
            retries=False,
        )

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        patch: str = "",
    ) -> dict[str, Any]:
        """One request; the answer as JSON, or ApiError with the server's Status."""
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = patch or "application/json"
            data = json.dumps(body).encode()
        answer = self.pool.request(method, url, body=data, headers=headers, timeout=30)
        if answer.status >= 400:
            raise _error(answer.status, answer.data)
        return json.loads(answer.data) if answer.data else {}

    def merge(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", path, body, patch="application/merge-patch+json")

    def events(
        self, path: str, query: dict[str, str], stopped: threading.Event
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """("SYNC", list) once per (re)list, then each watch event, until `stopped`."""
        version = ""
        while not stopped.is_set():
            try:
                if not version:
                    listed = self.call("GET", path, query=query)
                    version = listed["metadata"]["resourceVersion"]
                    yield "SYNC", listed
                for kind, obj in self._watch(path, query, version, stopped):
                    if kind == "ERROR":
                        version = ""  # 410 Gone (or another error): list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        yield kind, obj
            except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError):
                if stopped.wait(0.5):
                    return
                version = ""

    def _watch(
        self, path: str, query: dict[str, str], version: str, stopped: threading.Event
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        params = {
            **query,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        answer = self.pool.request(
            "GET",
            f"{self.server}{path}?{urlencode(params)}",
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=330),
        )
        try:
            if answer.status >= 400:
                raise _error(answer.status, answer.read())
            buffer = b""
            for chunk in answer.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
                if stopped.is_set():
                    return
        finally:
            answer.release_conn()


def _error(status: int, data: bytes) -> ApiError:
    try:
        found = json.loads(data)
        return ApiError(status, found.get("reason", ""), found.get("message", ""))
    except ValueError:
        return ApiError(status, "", data[:200].decode(errors="replace"))


def informer(
    api: Api,
    path: str,
    query: dict[str, str],
    handle: Callable[[str, dict[str, Any]], None],
    stopped: threading.Event,
    name: str,
) -> threading.Thread:
    """A thread that hands each object to `handle` as ADDED, MODIFIED or DELETED; after a
    relist, objects that went meanwhile are handed as DELETED."""
    known: dict[str, dict[str, Any]] = {}

    def run() -> None:
        for kind, obj in api.events(path, query, stopped):
            if kind == "SYNC":
                now = {item["metadata"]["uid"]: item for item in obj["items"]}
                for uid, gone in list(known.items()):
                    if uid not in now:
                        known.pop(uid)
                        _safely(handle, "DELETED", gone)
                for uid, item in now.items():
                    _safely(handle, "MODIFIED" if uid in known else "ADDED", item)
                known.clear()
                known.update(now)
                continue
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                known.pop(uid, None)
            else:
                known[uid] = obj
            _safely(handle, kind, obj)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


def _safely(handle: Callable[[str, dict[str, Any]], None], kind: str, obj: dict) -> None:
    # A handler's bug is logged, not the end of the informer (a kubelet keeps watching).
    try:
        handle(kind, obj)
    except Exception as exc:
        meta = obj.get("metadata") or {}
        print(f"devcluster: {kind} {meta.get('namespace')}/{meta.get('name')}: {exc!r}", flush=True)


def retry(action: Callable[[], Any], attempts: int = 5) -> Any:
    """A write that meets 409 Conflict is tried again, as controllers do."""
    for attempt in range(attempts):
        try:
            return action()
        except ApiError as error:
            if error.code != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    return None
