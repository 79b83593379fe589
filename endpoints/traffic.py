"""What the router sees of each deployment, second by second: requests by status code,
their latency in buckets (so that several routers' counts add up), and how many requests
were in flight or waiting at once (`busy`, what the autoscaler scales on).

Each router process keeps the current second in memory (a lock and a few additions per
request) and a background thread writes the seconds that have ended, one row per
deployment per second per router, so a request never waits on the database. The runner's
autoscaler and the endpoint page's charts read the rows; the runner drops rows older
than STUDIO_TRAFFIC_KEEP_SECONDS.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from endpoints.models import Deployment, TrafficSecond

log = logging.getLogger(__name__)

# Latency bucket bounds in milliseconds; the last bucket is everything slower.
BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 180000)


@dataclass
class Second:
    codes: Counter[str] = field(default_factory=Counter)
    latency: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))
    busy: int = 0
    replicas: int = 0


def bucket_of(milliseconds: float) -> int:
    for index, bound in enumerate(BOUNDS_MS):
        if milliseconds <= bound:
            return index
    return len(BOUNDS_MS)


def percentile(latency: list[int], q: float) -> float | None:
    """The bucket bound under which a share q of the requests answered (None: none)."""
    total = sum(latency)
    if not total:
        return None
    wanted = math.ceil(q * total)
    seen = 0
    for index, count in enumerate(latency):
        seen += count
        if seen >= wanted:
            return float(BOUNDS_MS[min(index, len(BOUNDS_MS) - 1)])
    return float(BOUNDS_MS[-1])


# How many ended seconds a router keeps while it cannot write them (then the oldest go).
UNSENT_SECONDS = 600

# Seconds that ended: (unix second, counts by deployment pk).
Ended = list[tuple[int, dict[int, Second]]]


def save(router: str, ended: Ended) -> int:
    """One router's ended seconds as rows (those of deployments still there); how many."""
    rows = [
        TrafficSecond(
            deployment_id=pk,
            at=datetime.fromtimestamp(at, UTC),
            router=router,
            codes=dict(second.codes),
            latency=second.latency,
            busy=second.busy,
            replicas=second.replicas,
        )
        for at, seconds in ended
        for pk, second in seconds.items()
    ]
    if not rows:
        return 0
    close_old_connections()
    try:
        live = set(
            Deployment.objects.filter(pk__in={r.deployment_id for r in rows}).values_list(
                "pk", flat=True
            )
        )
        # A second sent again (its first write's answer was lost) is kept once.
        TrafficSecond.objects.bulk_create(
            [r for r in rows if r.deployment_id in live], ignore_conflicts=True
        )
    finally:
        close_old_connections()
    return len(rows)


class Recorder:
    """One router process's counts: `started` and `finished` around each request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.name = f"{socket.gethostname()}-{os.getpid()}"[:64]
        self.second = int(time.time())
        self.current: dict[int, Second] = {}
        self.ended: Ended = []
        # Where ended seconds go: the database, or the studio (endpoints.remote).
        self.write: Callable[[str, Ended], object] = save
        self.busy_now: Counter[int] = Counter()
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def _now(self) -> dict[int, Second]:
        """The current second's counts (under the lock); a new second starts with every
        deployment that still has requests under way."""
        now = int(time.time())
        if now != self.second:
            if self.current:
                self.ended.append((self.second, self.current))
            self.second = now
            self.current = {pk: Second(busy=busy) for pk, busy in self.busy_now.items() if busy > 0}
        return self.current

    def started(self, pk: int, replicas: int) -> None:
        with self.lock:
            seconds = self._now()
            self.busy_now[pk] += 1
            second = seconds.setdefault(pk, Second())
            second.busy = max(second.busy, self.busy_now[pk])
            second.replicas = replicas
        self._ensure_thread()

    def finished(self, pk: int, status: int, seconds_taken: float) -> None:
        with self.lock:
            second = self._now().setdefault(pk, Second())
            self.busy_now[pk] = max(0, self.busy_now[pk] - 1)
            second.codes[str(status)] += 1
            second.latency[bucket_of(seconds_taken * 1000)] += 1

    def _ensure_thread(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, daemon=True, name="traffic")
            self.thread.start()

    def _run(self) -> None:
        failing = False
        while not self.stopping.wait(1.0):
            try:
                self.flush()
            except Exception as exc:
                # The database (or the studio) is away for now: the seconds are kept and
                # the next second tries again; said once, not every second.
                if not failing:
                    log.warning(
                        "writing the router's traffic counts failed, retrying each second "
                        "(up to %d seconds kept): %s",
                        UNSENT_SECONDS,
                        exc,
                    )
                failing = True
                continue
            if failing:
                log.warning("the router's traffic counts are written again")
            failing = False

    def stop(self) -> None:
        """The router stops: its last counts are written (the second under way too) and
        the writer thread ends; a later request starts afresh."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        with self.lock:
            if self.current:
                self.ended.append((self.second, self.current))
            self.current, self.busy_now = {}, Counter()
        try:
            self.flush()
        except Exception:
            log.exception("writing the router's last traffic counts failed")
        self.stopping.clear()

    def flush(self) -> int:
        """Write the seconds that have ended; how many deployment-seconds."""
        with self.lock:
            self._now()
            ended, self.ended = self.ended, []
        if ended:
            try:
                self.write(self.name, ended)
            except Exception:
                with self.lock:  # back in front of any second that ended meanwhile
                    self.ended = (ended + self.ended)[-UNSENT_SECONDS:]
                raise
        return sum(len(seconds) for _, seconds in ended)


RECORDER = Recorder()


def record_replicas(deployment: Deployment, replicas: int) -> None:
    """The autoscaler's change of size, as a row of its own (routers' rows say the size
    they route to, which lags by up to a second, and there are none while idle)."""
    TrafficSecond.objects.update_or_create(
        deployment=deployment,
        at=datetime.now(UTC).replace(microsecond=0),
        router="autoscaler",
        defaults={"replicas": replicas, "latency": [0] * (len(BOUNDS_MS) + 1)},
    )


# -- reading -----------------------------------------------------------------------------------
def busy(deployment: Deployment, seconds: float) -> int:
    """The most requests in flight or waiting at once, summed over routers per second, in
    the last `seconds` (the seconds the routers have written)."""
    since = datetime.now(UTC) - timedelta(seconds=seconds + 1)
    per_second: Counter[datetime] = Counter()
    for at, value in TrafficSecond.objects.filter(deployment=deployment, at__gte=since).values_list(
        "at", "busy"
    ):
        per_second[at] += value
    return max(per_second.values(), default=0)


def series(deployment: Deployment, minutes: int = 15) -> dict[str, Any]:
    """The charts' data: per second, requests by status code, latency percentiles, and
    replicas."""
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    merged: dict[datetime, Second] = {}
    for row in TrafficSecond.objects.filter(deployment=deployment, at__gte=since).order_by("at"):
        second = merged.setdefault(row.at, Second())
        second.codes.update(row.codes)
        second.latency = [a + b for a, b in zip(second.latency, row.latency, strict=False)]
        second.busy += row.busy
        second.replicas = max(second.replicas, row.replicas)
    times = [at.isoformat() for at in merged]
    codes = sorted({code for second in merged.values() for code in second.codes})
    return {
        "times": times,
        "codes": {code: [s.codes.get(code, 0) for s in merged.values()] for code in codes},
        "latency": {
            name: [percentile(s.latency, q) for s in merged.values()]
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "replicas": [s.replicas for s in merged.values()],
        "busy": [s.busy for s in merged.values()],
    }


def prune() -> int:
    keep = timedelta(seconds=settings.STUDIO_TRAFFIC_KEEP_SECONDS)
    with contextlib.suppress(Exception):
        return int(TrafficSecond.objects.filter(at__lt=datetime.now(UTC) - keep).delete()[0])
    return 0
