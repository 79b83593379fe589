"""A container's log as its kubelet gives it, followed: one stream per container in a
thread of its own (one request for as long as the container runs, not one a second),
resuming after a dropped connection from a little before the last line taken
(timestamps) without taking a line twice. The jobs backend follows its pods' `job`
containers with it; the endpoints' log store its deployments' containers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import kube

log = logging.getLogger(__name__)


def parse_stamp(text: str) -> tuple[int, int]:
    """An RFC 3339 time with up to nanoseconds as (seconds, nanoseconds): comparable."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds, int((fraction + "000000000")[:9]) if fraction else 0


def lines_after(
    raw_lines: list[bytes], after: str, seen: int, skip: int
) -> tuple[list[tuple[str, str]], str, int, int]:
    """The new lines of a pod log read with timestamps, from a little before the last
    line taken (`after`, of which `seen` lines share its timestamp): lines older than it
    are dropped and `skip` of those at exactly it. Returns the (timestamp, line) pairs
    kept, the new `after` and `seen`, and how many are still to be skipped."""
    taken = []
    last = parse_stamp(after) if after else None
    for raw in raw_lines:
        stamp_text, _, line = raw.decode("utf-8", errors="replace").rstrip("\r").partition(" ")
        try:
            at = parse_stamp(stamp_text)
        except ValueError:
            continue
        if last is not None and at < last:
            continue
        if last is not None and at == last and skip > 0:
            skip -= 1
            continue
        taken.append((stamp_text, line))
        if last is not None and at == last:
            seen += 1
        else:
            after, seen, last = stamp_text, 1, at
    return taken, after, seen, skip


def _nothing() -> None:
    pass


class ContainerLog:
    """One container's log, streamed in a thread: lines wait until `take`. `ended` says
    whether the container has ended (then a stream that closes has given everything);
    `heard` is called when lines come or the log is done."""

    def __init__(
        self,
        core: Callable[[], client.CoreV1Api],
        namespace: str,
        pod: str,
        container: str,
        after: str = "",
        seen: int = 0,
        *,
        ended: Callable[[], bool],
        heard: Callable[[], None] = _nothing,
        stop: threading.Event | None = None,
    ) -> None:
        self.core, self.namespace, self.pod, self.container = core, namespace, pod, container
        self.after = after  # the timestamp of the last line taken
        self.seen = seen  # how many lines with exactly that timestamp were taken
        self.ended, self.heard = ended, heard
        self.stopping = stop or threading.Event()
        self.lines: list[tuple[str, str]] = []
        self.done = False  # the container ended and its whole log was read
        self.lock = threading.Lock()
        self._response: Any = None

    def start(self) -> ContainerLog:
        name = f"log {self.pod}/{self.container}"
        threading.Thread(target=self._follow, daemon=True, name=name).start()
        return self

    def stop(self) -> None:
        """No more reading (the pod is no longer wanted): an idle stream is closed."""
        self.done = True
        response = self._response
        if response is not None:  # unblocks the read waiting in the thread
            response.shutdown()

    def take(self) -> list[tuple[str, str]]:
        with self.lock:
            taken, self.lines = self.lines, []
        return taken

    def _follow(self) -> None:
        backoff = 0.2
        while not self.done and not self.stopping.is_set():
            skip = self.seen  # lines at exactly `after` taken already
            since = None
            if self.after:  # resume a little before it (clocks differ), skip what was read
                since = int(time.time() - parse_stamp(self.after)[0]) + 5
            try:
                self._response = self.core().read_namespaced_pod_log(
                    self.pod,
                    self.namespace,
                    container=self.container,
                    follow=True,
                    timestamps=True,
                    since_seconds=since,
                    _preload_content=False,
                    _request_timeout=kube.FOLLOW_TIMEOUT,
                )
                pending = b""
                for chunk in self._response.stream(64 * 1024):
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    skip = self._take(complete, skip)
                self._take([pending] if pending else [], skip)
            except ApiException as exc:
                if exc.status == 404:  # the pod is gone, and its log with it
                    self.done = True
                # else (400: not started yet; 5xx): try again
            except Exception as exc:
                log.debug("following %s/%s: %s", self.pod, self.container, exc)
            finally:
                self._response = None
            if self.done or self.ended():
                self.done = True  # the stream ended after the container: all is read
                self.heard()
                return
            self.stopping.wait(backoff)
            backoff = min(5.0, backoff * 2)

    def _take(self, raw_lines: list[bytes], skip: int) -> int:
        """Keep the new lines of a (re)connected stream; returns how many lines at the
        resume point are still to be skipped."""
        with self.lock:
            taken, self.after, self.seen, skip = lines_after(raw_lines, self.after, self.seen, skip)
            self.lines.extend(taken)
        if taken:
            self.heard()
        return skip
