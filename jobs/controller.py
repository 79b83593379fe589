"""The job controller: hands queued jobs to their compute and follows them to the end.

It runs as `manage.py runcontroller` (server mode, any number of them) or as a task in
the web process (embedded mode). Each pass of its loop, in one worker thread:

- claims queued jobs (a conditional UPDATE, behind SELECT ... FOR UPDATE SKIP LOCKED where
  the database has it), so that no job is handed out twice;
- asks the backend what changed for each job it holds: new log lines are stored and
  published, phase changes become state transitions;
- forwards cancel requests to the backend;
- renews its lease on its jobs, and adopts active jobs whose holder's lease ran out
  (a controller that died or restarted), so that no job stays Running forever.

It wakes on a channel-layer message when a job is queued or a cancel is requested, and
otherwise ticks quickly while it holds jobs, slowly when idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, Q
from django.db.utils import InterfaceError, OperationalError
from django.utils import timezone

from compute import clusters, instance_types
from compute.backends import LaunchSpec, backend_class, backend_for
from compute.backends.base import ComputeBackend
from jobs import events, services
from jobs import outputs as job_outputs
from jobs.launch import DataProblem, launch_spec
from jobs.models import ACTIVE, TERMINAL, Job, Status
from tracking import services as tracking

log = logging.getLogger(__name__)

BUSY_TICK = 0.02  # seconds between looks at jobs whose compute cannot tell news
# A job with news is followed at most this often, so that a chatty job's lines go out in
# batches: the web workers fan each message out to every socket watching the job, and
# one message per line (100 watchers, a line every 10 ms) outran them.
NEWS_EVERY = 0.05
IDLE_TICK = 1.0  # fallback poll for queued jobs when no wake message came
LEASE = timedelta(seconds=15)
CLAIM_BATCH = 20
SUBMITTERS = 8  # jobs handed to their computes at once
CHECK_ATTACHMENTS_EVERY = 30.0  # seconds between looks at each Kubernetes namespace
# A job that cannot be followed for this long, retried every tick meanwhile, fails.
GIVE_UP_AFTER = 2.0
# The order the phases follow: a phase seen late passes through the ones before it, so
# the record of a job that ran in a blink still shows every state.
PHASE_PATH = (Status.PREPARING, Status.RUNNING, Status.FINALIZING)


@dataclass
class Held:
    job: Job
    backend: ComputeBackend
    cancel_sent_at: float | None = None
    errors: int = 0  # consecutive failures to follow the job
    failing_since: float = 0.0
    watched: str | None = None  # the backend tells when this job has news
    followed_at: float = 0.0
    # Its named outputs being copied to their datastores (a pool thread), and how the
    # job ended, recorded when the copy is done.
    delivery: Future[tuple[list[dict[str, Any]], str, list[str]]] | None = None
    ending: tuple[str, int | None, str] = ("", None, "")


class Controller:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:100]
        self.held: dict[int, Held] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controller")
        # Submissions to computes, side by side (no database work happens in these).
        self.submitter = ThreadPoolExecutor(max_workers=SUBMITTERS, thread_name_prefix="submit")
        self.wake = asyncio.Event()
        self.last_claim = 0.0
        self.last_sweep = 0.0
        self.last_check = 0.0
        self.checking: threading.Thread | None = None
        self.full: set[str] = set()  # kinds of compute with no room left at the last claim
        # Jobs of each kind with a room that other controllers of this host hold, their
        # leases running or run out (a controller killed and started again: its jobs run
        # on until adopted), counted at each claim: the host's slots are shared.
        self.host_prefix = f"{socket.gethostname()}:"
        self.elsewhere: dict[str, int] = {}
        self.grace = float(settings.STUDIO_CANCEL_GRACE_SECONDS)
        # Told, not asking: backends that report news (compute/backends/base.py) mark jobs
        # here from the event loop; a pass follows those (and every job once a second).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.news: set[int] = set()
        self.news_lock = threading.Lock()
        self.by_key: dict[tuple[int, str], int] = {}  # (backend, watch key) -> job id
        self.readers: dict[int, ComputeBackend] = {}  # events fd -> backend
        # Set as the stop is asked for: a pass under way (a thousand jobs to follow, say)
        # ends after the job at hand rather than after all of them.
        self.stopping = threading.Event()

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        log.info("controller %s started", self.name)
        self.loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(stop))

        async def tell_the_pass() -> None:
            await stop.wait()
            self.stopping.set()

        telling = asyncio.create_task(tell_the_pass())
        step = sync_to_async(self.step, thread_sensitive=False, executor=self.executor)
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    if await step():
                        continue  # room opened for jobs that wait: claim at once
                except Exception:
                    # A database outage, say: keep going, the next pass retries.
                    log.exception("controller pass failed; retrying")
                    await sync_to_async(
                        close_old_connections, thread_sensitive=False, executor=self.executor
                    )()
                    await asyncio.sleep(IDLE_TICK)
                # Jobs whose backend cannot tell news, jobs that just failed to be
                # followed and news held back for batching are looked at every tick.
                asking = bool(self.news) or any(
                    h.watched is None or h.errors for h in self.held.values()
                )
                timeout = BUSY_TICK if asking else IDLE_TICK
                waiters = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            listener.cancel()
            telling.cancel()
            for fd in list(self.readers):
                self.loop.remove_reader(fd)
            await sync_to_async(self.release_all, thread_sensitive=False, executor=self.executor)()
            instance_types.stop_following()
            self.executor.shutdown(wait=True)
            self.submitter.shutdown(wait=True)
            log.info("controller %s stopped", self.name)

    async def _listen(self, stop: asyncio.Event) -> None:
        """Wake-ups from the channel layer; without them the controller still polls."""
        layer = get_channel_layer()
        if layer is None:
            return
        while not stop.is_set():
            try:
                channel = await layer.new_channel()
                await layer.group_add(events.CONTROLLER_GROUP, channel)
                try:
                    while not stop.is_set():
                        self._woken(await layer.receive(channel))
                finally:
                    await layer.group_discard(events.CONTROLLER_GROUP, channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller lost its wake-up channel; polling until it is back")
                await asyncio.sleep(5)

    def _woken(self, message: dict[str, Any]) -> None:
        if message.get("type") != "controller.wake":
            return
        if message.get("reason") == "cancel":
            self.last_sweep = 0.0  # look at held jobs' states now
        else:
            self.last_claim = 0.0
        self.wake.set()

    def step(self) -> bool:
        """One pass; runs in the controller's worker thread. True when another should
        follow at once (a kind of compute that was full has room again)."""
        now = time.monotonic()
        # Full with work still queued: claim again as soon as a job of that kind ends.
        if now - self.last_claim >= IDLE_TICK or (self.full - self._full_kinds()):
            self.last_claim = now
            self.adopt()
            self._count_elsewhere()
            while not self.stopping.is_set() and self.claim():
                pass
            self.full = self._full_kinds()
            self._say_why_waiting()
        everyone = now - self.last_sweep >= 1.0
        if everyone:  # also the fallback for news lost or never told (a launcher killed)
            self.last_sweep = now
            self.sweep()
            # Each cluster's InstanceType objects, followed into the studio.
            instance_types.follow_clusters()
            self._check_attachments(now)
        with self.news_lock:
            news, self.news = self.news, set()
        later = set()
        for held in list(self.held.values()):
            if self.stopping.is_set():
                break  # its lease is released on the way out: another controller adopts it
            due = everyone or held.watched is None or bool(held.errors)
            if not due and held.job.pk in news:
                due = now - held.followed_at >= NEWS_EVERY
                if not due:
                    later.add(held.job.pk)
            if due:
                held.followed_at = now
                self.follow_safely(held)
        if later:
            with self.news_lock:
                self.news |= later
        return bool(self.full - self._full_kinds())

    # -- claiming --------------------------------------------------------------------------
    def _lease_fields(self) -> dict[str, Any]:
        return {"lease_owner": self.name, "lease_expires_at": timezone.now() + LEASE}

    def _room(self, kind: str) -> int | None:
        """Jobs of this kind the controller may still take; None: no limit."""
        capacity = self._capacity(kind)
        if capacity is None:
            return None
        mine = sum(1 for h in self.held.values() if h.job.compute_kind == kind)
        return capacity - mine - self.elsewhere.get(kind, 0)

    def _count_elsewhere(self) -> None:
        bounded = [k for k in settings.STUDIO_COMPUTE_BACKENDS if self._capacity(k) is not None]
        found = (
            Job.objects.filter(status__in=ACTIVE, compute_kind__in=bounded,
                               lease_owner__startswith=self.host_prefix)
            .exclude(lease_owner=self.name)
            .exclude(pk__in=list(self.held))
            .values("compute_kind")
            .annotate(count=Count("id"))
        )  # fmt: skip
        self.elsewhere = {row["compute_kind"]: row["count"] for row in found}

    @staticmethod
    def _capacity(kind: str) -> int | None:
        try:
            return backend_class(kind).capacity()
        except LookupError:
            return 0  # a kind this studio cannot run: never claimed

    def _full_kinds(self) -> set[str]:
        kinds = set(settings.STUDIO_COMPUTE_BACKENDS) | {
            h.job.compute_kind for h in self.held.values()
        }
        return {kind for kind in kinds if (room := self._room(kind)) is not None and room <= 0}

    def _say_why_waiting(self) -> None:
        """Queued jobs of a full kind say why they wait (shown on the job and in the API)."""
        for kind in self.full:
            capacity = backend_class(kind).capacity()
            reason = (
                f"Waiting for a free slot: {capacity} {kind} job(s) run at once on this "
                "host (STUDIO_MAX_RUNNING_JOBS)."
            )
            Job.objects.filter(status=Status.QUEUED, compute_kind=kind).exclude(
                waiting_reason=reason
            ).update(waiting_reason=reason)

    def claim(self) -> int:
        """Take queued jobs while their compute has room; return how many were taken.
        Each kind of compute has its own room (local: this host's slots), so jobs bound
        for a cluster never wait behind local ones, nor use their slots."""
        room = {kind: self._room(kind) for kind in settings.STUDIO_COMPUTE_BACKENDS}
        open_kinds = [kind for kind, left in room.items() if left is None or left > 0]
        if not open_kinds:
            return 0
        with transaction.atomic():
            candidates = list(
                Job.objects.filter(
                    status=Status.QUEUED, compute_kind__in=open_kinds, lease_owner=""
                )
                .order_by("created_at", "id")
                .select_for_update(skip_locked=True)
                .values_list("pk", "compute_kind")[:CLAIM_BATCH]
            )
            ids = []
            for pk, kind in candidates:
                left = room[kind]
                if left is None or left > 0:
                    ids.append(pk)
                    room[kind] = None if left is None else left - 1
            if not ids:
                return 0
            claimed = [
                job
                # The launch spec names the workspace: read with the job, not once a job.
                for job in Job.objects.filter(pk__in=ids, status=Status.QUEUED).select_related(
                    "compute", "workspace", "created_by"
                )
                if services.transition(
                    job, Status.PREPARING, waiting_reason="", **self._lease_fields()
                )
            ]
        self.start(*claimed)
        return len(claimed)

    def start(self, *jobs: Job) -> None:
        """Hand jobs to their computes. The submissions run side by side (a cluster's API
        answers each in milliseconds, and one after another would cap the rate at that);
        what they return is recorded here, in the controller's own thread."""
        work: list[tuple[Job, ComputeBackend]] = []
        specs: list[LaunchSpec] = []
        for job in jobs:
            try:
                tracking.start_job_run(
                    job.workspace, job.experiment_name, job.run_id,
                    job.display_name or job.name, getattr(job.created_by, "username", ""),
                    {"kstudio.job": job.name, "kstudio.compute": job.compute_name},
                )  # fmt: skip
                specs.append(launch_spec(job))
            except DataProblem as problem:  # its data is gone, or its storage refuses
                reason = f"Preparing failed: {problem}"
                services.transition(job, Status.FAILED, reason, failure_reason=reason)
                continue
            work.append((job, backend_for(job.compute, job.compute_kind)))
        submissions = list(self.submitter.map(_submit, [b for _, b in work], specs))
        started: list[tuple[Job, ComputeBackend]] = []
        for (job, backend), (runtime, exc) in zip(work, submissions, strict=True):
            if exc is not None:
                log.error("could not start job %s: %s", job.name, exc, exc_info=exc)
                services.transition(
                    job,
                    Status.FAILED,
                    f"Could not start: {exc}",
                    failure_reason=f"The compute could not start the job: {exc}",
                )
                continue
            job.runtime = runtime
            started.append((job, backend))
        # One write for the batch: what each compute said about its job.
        Job.objects.bulk_update([job for job, _ in started], ["runtime"])
        for job, backend in started:
            self.hold(Held(job=job, backend=backend))

    def hold(self, held: Held) -> None:
        """Follow a job from now on; ask its backend to tell when it has news."""
        self.held[held.job.pk] = held
        with self.news_lock:
            self.news.add(held.job.pk)  # look at it in this pass
        fd = held.backend.events_fd()
        if fd is None:
            return
        held.watched = held.backend.watch(held.job.runtime)
        if held.watched is None:
            return
        self.by_key[(id(held.backend), held.watched)] = held.job.pk
        if fd not in self.readers and self.loop is not None:
            self.readers[fd] = held.backend
            self.loop.call_soon_threadsafe(self.loop.add_reader, fd, self._told, held.backend)

    def let_go(self, job_id: int) -> None:
        held = self.held.pop(job_id, None)
        if held is not None and held.watched is not None:
            self.by_key.pop((id(held.backend), held.watched), None)
            held.backend.unwatch(held.job.runtime)

    def _told(self, backend: ComputeBackend) -> None:
        """In the event loop: a backend's descriptor is readable, some jobs have news."""
        jobs = {self.by_key.get((id(backend), key)) for key in backend.changed()}
        jobs.discard(None)
        if jobs:
            with self.news_lock:
                self.news.update(j for j in jobs if j is not None)
            self.wake.set()

    def adopt(self) -> None:
        """Take over active jobs whose controller stopped renewing its lease."""
        # Queued jobs with an owner are held by a compute that cannot start them yet.
        held = Q(status__in=ACTIVE) | Q(status=Status.QUEUED) & ~Q(lease_owner="")
        expired = Job.objects.filter(held, lease_expires_at__lt=timezone.now()).select_related(
            "compute", "workspace"
        )
        for job in expired.exclude(pk__in=list(self.held)):
            taken = Job.objects.filter(
                pk=job.pk, lease_owner=job.lease_owner, lease_expires_at=job.lease_expires_at
            ).update(**self._lease_fields())
            if not taken:
                continue
            log.info("adopting job %s from %s", job.name, job.lease_owner or "nobody")
            if not job.runtime:  # died before its compute got it: start it now
                self.start(job)
                continue
            self.hold(Held(job=job, backend=backend_for(job.compute, job.compute_kind)))

    def _check_attachments(self, now: float) -> None:
        """Now and then, in a thread of its own (a cluster may be slow to answer): do the
        Kubernetes targets' namespaces still exist?"""
        if now - self.last_check < CHECK_ATTACHMENTS_EVERY:
            return
        if self.checking is not None and self.checking.is_alive():
            return
        self.last_check = now

        def check() -> None:
            try:
                clusters.check_attachments()
            except Exception:
                log.exception("checking the Kubernetes compute targets failed")
            finally:
                close_old_connections()

        self.checking = threading.Thread(target=check, daemon=True, name="check-attachments")
        self.checking.start()

    def sweep(self) -> None:
        """Renew leases and pick up state changes made by others (cancel requests)."""
        if not self.held:
            return
        Job.objects.filter(pk__in=list(self.held), lease_owner=self.name).update(
            lease_expires_at=timezone.now() + LEASE
        )
        rows = Job.objects.filter(pk__in=list(self.held)).values_list("pk", "status", "lease_owner")
        current = {pk: (status, owner) for pk, status, owner in rows}
        for job_id, held in list(self.held.items()):
            status, owner = current.get(job_id, (held.job.status, ""))
            if owner != self.name:  # someone else adopted it, or it was deleted
                self.let_go(job_id)
                continue
            held.job.status = status

    # -- following -------------------------------------------------------------------------
    def follow_safely(self, held: Held) -> None:
        """Follow one job; one job's trouble must not stop the others."""
        try:
            self.follow(held)
            held.errors = 0
            held.failing_since = 0.0
        except (OperationalError, InterfaceError):
            raise  # the database itself is in trouble: the whole pass is
        except Exception as exc:  # this job's data, backend or bug: this job only
            held.errors += 1
            held.failing_since = held.failing_since or time.monotonic()
            log.exception("following job %s failed (%d in a row)", held.job.name, held.errors)
            if time.monotonic() - held.failing_since >= GIVE_UP_AFTER:
                held.backend.cancel(held.job.runtime, force=True)
                services.transition(
                    held.job,
                    Status.FAILED,
                    failure_reason=f"The studio lost track of the job: {exc}",
                )
                self.let_go(held.job.pk)

    def follow(self, held: Held) -> None:
        job = held.job
        if held.delivery is not None:  # Finalizing: its outputs are being delivered
            if held.delivery.done():
                self._conclude(held, *held.delivery.result())
            return
        if job.status == Status.CANCEL_REQUESTED:
            self._forward_cancel(held)
        observation = held.backend.observe(job.runtime, job.log_cursor)
        if observation.instances is not None and observation.instances != job.instances:
            services.set_instances(job, observation.instances)
        if observation.lines or observation.cursor != job.log_cursor:
            services.append_logs(job, observation.lines, observation.cursor)
        phase = observation.phase
        if phase == Status.QUEUED:
            self._wait_in_queue(job, observation.waiting_reason)
        elif phase == Status.PREPARING and job.status == Status.QUEUED:
            services.transition(job, Status.PREPARING, waiting_reason="")
        elif phase in (Status.RUNNING, Status.FINALIZING):
            if job.status == Status.QUEUED:
                services.transition(job, Status.PREPARING, waiting_reason="")
            self._advance_to(job, phase)
        elif phase in TERMINAL:
            self._finish(
                held, phase, observation.exit_code, observation.reason, observation.outputs
            )

    def _wait_in_queue(self, job: Job, reason: str) -> None:
        """The compute holds the job but cannot start it yet (a cluster without room):
        Queued again, saying why, still held by this controller."""
        reason = reason[:500]
        if job.status == Status.PREPARING:
            services.transition(job, Status.QUEUED, reason, waiting_reason=reason)
        elif job.status == Status.QUEUED and job.waiting_reason != reason:
            services.set_waiting_reason(job, reason)

    def _advance_to(self, job: Job, phase: str) -> None:
        if job.status == Status.CANCEL_REQUESTED or job.status not in PHASE_PATH:
            return
        start = PHASE_PATH.index(Status(job.status)) + 1
        stop = PHASE_PATH.index(Status(phase)) + 1
        for status in PHASE_PATH[start:stop]:
            services.transition(job, status)

    def _finish(
        self,
        held: Held,
        phase: str,
        exit_code: int | None,
        reason: str,
        outputs: list[dict[str, Any]],
    ) -> None:
        job = held.job
        if job.status == Status.QUEUED and phase != Status.CANCELED:
            # Ended while its compute held it waiting (its image could not be built).
            services.transition(job, Status.PREPARING, waiting_reason="")
        if job.status == Status.CANCEL_REQUESTED and phase != Status.COMPLETED:
            phase, reason = Status.CANCELED, "Canceled by request."
        elif phase != Status.CANCELED:
            self._advance_to(job, Status.FINALIZING)
        held.ending = (phase, exit_code, reason)
        delivery = (
            job_outputs.plan_delivery(job, outputs, completed=phase == Status.COMPLETED)
            if phase != Status.CANCELED
            else None
        )
        if delivery is not None and delivery.needed:
            # Finalizing: parts joined, named outputs sent to their datastores, in a pool
            # thread (they may be big; this thread follows every other job meanwhile).
            held.delivery = self.submitter.submit(job_outputs.deliver, delivery)
            held.delivery.add_done_callback(lambda _: self._nudge(job.pk))
            return
        self._conclude(held, outputs, "", [])

    def _conclude(
        self, held: Held, outputs: list[dict[str, Any]], problem: str, moved: list[str]
    ) -> None:
        """Record how the job ended; a completed job's named outputs become data assets."""
        job = held.job
        phase, exit_code, reason = held.ending
        if not problem and phase == Status.COMPLETED and job.data_outputs:
            problem = job_outputs.register(job)
        if problem:
            phase, reason = Status.FAILED, problem
        # The run ends with the job, in one transaction: no one sees an ended job whose
        # run is still RUNNING.
        with transaction.atomic():
            ended = services.transition(
                job,
                phase,
                reason,
                exit_code=exit_code,
                failure_reason=reason if phase == Status.FAILED else "",
                outputs=outputs,
            )
            if ended:
                tracking.end_job_run(job.run_id, phase)
        if ended and moved:
            self.submitter.submit(job_outputs.forget, moved)
        self.let_go(job.pk)

    def _nudge(self, job_id: int) -> None:
        """From any thread: look at this job in the next pass, now."""
        with self.news_lock:
            self.news.add(job_id)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake.set)

    def _forward_cancel(self, held: Held) -> None:
        now = time.monotonic()
        if held.cancel_sent_at is None:
            held.cancel_sent_at = now
            held.backend.cancel(held.job.runtime)
        elif now - held.cancel_sent_at > self.grace + 5:
            # The launcher itself kills after the grace period; this is the backstop.
            held.backend.cancel(held.job.runtime, force=True)

    def release_all(self) -> None:
        """On a clean shutdown, let another controller adopt our jobs at once."""
        if self.held:
            Job.objects.filter(pk__in=list(self.held), lease_owner=self.name).update(
                lease_expires_at=timezone.now()
            )
        for job_id in list(self.held):
            self.let_go(job_id)
        close_old_connections()


def _submit(backend: ComputeBackend, spec: LaunchSpec) -> tuple[dict[str, Any], Exception | None]:
    try:
        return backend.submit(spec), None
    except Exception as exc:  # reported for this job only
        return {}, exc
