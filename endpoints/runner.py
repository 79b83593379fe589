"""Runs the deployments of endpoints on the local compute: each instance a model server
(server.py) on a loopback port, a child of this runner.

A tick (`reconcile`, twice a second) brings what runs in line with what is asked:
a new or updated deployment's instances start beside the old ones and take over only
once every one answers its liveness route (a rolling update: no request fails while it
happens); one that exits before that fails the deployment with Azure's code and the
reason from its log; a deleted one stops. Instances stop with the runner (they serve
only through the studio's router) and start again with it.

The runner runs in the controller's process: `serve`'s loop (embedded) or `runcontroller`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from django.conf import settings
from django.core.files.storage import storages
from django.db import close_old_connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from compute import inference
from compute import kube as kube_client
from compute.launcher import LaunchError, kill_user_processes
from compute.models import Cluster, ComputeKind
from endpoints import autoscale, kube, logs, server, services, spec, traffic
from endpoints.instances import (
    Limits,
    NoIsolatedPython,
    build_environment,
    deployment_uid,
    error_of,
    hand_over,
    log_files,
    record_of,
    runnable,
    server_python,
    start_instance,
    terminate,
)
from endpoints.models import Deployment, Endpoint, State
from endpoints.processes import SERVER, adoptable, stop_every_server_in, stop_orphans
from endpoints.tokens import SERVER_KEY_VARIABLE, server_key
from registry import services as registry

log = logging.getLogger(__name__)
TICK = 0.5
KUBE_CHECK = 5.0  # seconds between reads of a Kubernetes deployment that serves (or failed)
ROUTER_CHECK = 30.0  # seconds between reads of the clusters' own routers' addresses
LOG_READ = 1.0  # seconds between reads of the deployments' logs into the log store
# More restarts of a deployment's instances than this in so many seconds: it fails.
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_SECONDS = 600
RUNNER_LEASE = dt.timedelta(seconds=15)  # a runner that stops renewing loses its deployments


def _autoscaling(deployment: Deployment) -> dict[str, Any] | None:
    """Its scale_settings when it autoscales (target_utilization with room to grow)."""
    scale = deployment.document.get("scale_settings") or {}
    if scale.get("type") != "target_utilization":
        return None
    low, high = int(scale.get("min_instances", 1)), int(scale.get("max_instances", 1))
    return scale if low < high else None


@dataclass
class Rollout:
    """A generation of a deployment on its way up: prepared in the background, then
    started, then serving once every instance answers."""

    generation: int
    processes: list[subprocess.Popen[bytes]]
    urls: list[str]
    logs: list[Path]
    deadline: float
    preparing: Future[tuple[dict[str, str], str]] | None = None
    spawned: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass
class Running:
    generation: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    # What one more instance needs (the autoscaler's): the interpreter, its variables,
    # the generation's folder; and the instances started for it that do not answer yet.
    python: str = ""
    env: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None
    limits: Limits = field(default_factory=Limits)
    starting: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    # The liveness probe's count of failures in a row and when it next looks, by pid;
    # and when instances were restarted (too many too fast: a crash loop).
    failures: dict[int, int] = field(default_factory=dict)
    probe_at: dict[int, float] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)


@dataclass
class Scaling:
    """The autoscaler's memory of a deployment: when it last polled, how many polls in a
    row one replica fewer would have done, and how many replicas it asked for."""

    polled_at: float = 0.0
    below: int = 0
    replicas: int = 0


def _unchanged(deployment: Deployment, generation: int | None = None) -> QuerySet[Deployment]:
    """The deployment's row, as long as nobody changed it since this runner read it: a
    new generation, or a delete, must not be overwritten by what the runner saw before."""
    return Deployment.objects.filter(
        pk=deployment.pk, generation=deployment.generation if generation is None else generation
    ).exclude(state=State.DELETING)


class Runner:
    def __init__(self, root: Path | None = None) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:100]
        self._root = root
        self.rollouts: dict[int, Rollout] = {}
        self.running: dict[int, Running] = {}
        # Instances replaced by a new generation: they finish what the router already sent
        # them (up to the request timeout) before they stop.
        self.draining: list[tuple[float, list[subprocess.Popen[bytes]]]] = []
        self.http = httpx.Client(timeout=1)
        self.preparer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deployment-prep")
        self.scaling: dict[int, Scaling] = {}
        self.pruned_at = 0.0
        self.applied: dict[int, int] = {}  # Kubernetes deployments: the generation applied
        self.checked: dict[int, float] = {}  # and when their state was last read
        # and the server's generation of their Deployment after the studio's last apply
        self.applied_on_server: dict[int, int] = {}
        self.reach: dict[int, tuple[int, str]] = {}  # and their Service's address, by generation
        self.routers_read_at = 0.0  # when the clusters' own routers' addresses were read
        # Logs are read in a thread of their own: a slow cluster delays them, not the tick.
        self.log_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deployment-logs")
        self.logs_read: Future[None] | None = None
        self.logs_read_at = 0.0
        self.log_errors: dict[int, str] = {}  # the last failure to read each one's logs
        self.held: set[int] = set()  # the deployments this runner holds (`hold`)

    @property
    def root(self) -> Path:
        """Read when used: a runner follows the setting (tests change it)."""
        return Path(self._root or settings.STUDIO_DEPLOYMENTS_DIR)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("deployment runner started")
        try:
            while not stop.is_set():
                await asyncio.to_thread(self.tick)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK)
        finally:
            await asyncio.to_thread(self.stop_all)
            self.preparer.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(self.log_reader.shutdown, wait=True, cancel_futures=True)
            logs.stop_following(set())
            log.info("deployment runner stopped")

    def tick(self) -> None:
        close_old_connections()
        try:
            self.reconcile()
        except Exception:  # a bad tick must not end the loop: the next one tries again
            log.exception("deployment runner tick failed")
        finally:
            close_old_connections()

    def hold(self) -> set[int]:
        """Take every deployment that no runner holds, or whose runner stopped renewing,
        and renew the ones this runner holds (one UPDATE: two runners cannot both take a
        row). What this runner held and another took is let go here."""
        now = timezone.now()
        # Its own are renewed once half their lease has gone: not a write every tick.
        due = Q(runner=self.name, runner_lease_expires_at__lt=now + RUNNER_LEASE / 2)
        free = Q(runner="") | Q(runner_lease_expires_at__lt=now) | due
        Deployment.objects.filter(free).update(
            runner=self.name, runner_lease_expires_at=now + RUNNER_LEASE
        )
        held = set(Deployment.objects.filter(runner=self.name).values_list("pk", flat=True))
        for pk in [*self.rollouts, *self.running]:
            if pk not in held:
                log.warning("deployment %d: held by another runner now; letting go", pk)
                self.abandon(pk)
                self.stop(pk)
        return held

    def release(self) -> None:
        """On the way out: another runner takes this one's deployments at once."""
        Deployment.objects.filter(runner=self.name).update(runner_lease_expires_at=timezone.now())

    def reconcile(self) -> None:
        now = time.monotonic()
        for _deadline, processes in [d for d in self.draining if d[0] <= now]:
            terminate(processes)
        self.draining = [d for d in self.draining if d[0] > now]
        self.held = self.hold()
        local = Deployment.objects.filter(
            endpoint__compute__kind=ComputeKind.LOCAL, pk__in=self.held
        )
        for deployment in local.select_related("endpoint", "model"):
            if deployment.state == State.DELETING:
                self.stop(deployment.pk)
                self.rollouts.pop(deployment.pk, None)
                uid = deployment_uid(deployment)
                if uid is not None:  # what its scoring script started and left running too
                    kill_user_processes(uid)
                # Any other model server of it: a failed update's predecessor, one that a
                # killed studio left, one that ran as the studio's user.
                stop_every_server_in(self.root / str(deployment.pk))
                deployment.delete()
            elif deployment.pk in self.rollouts:
                self.follow(deployment)
            elif deployment.state in (State.CREATING, State.UPDATING):
                self.start(deployment)
            elif deployment.state in (State.SUCCEEDED, State.SCALING):
                self.keep_up(deployment)
        self.reconcile_kubernetes()
        Endpoint.objects.filter(state=State.DELETING, deployments__isnull=True).delete()
        if now - self.logs_read_at >= LOG_READ and (
            self.logs_read is None or self.logs_read.done()
        ):
            self.logs_read_at = now
            self.logs_read = self.log_reader.submit(self.read_logs)
        if now - self.pruned_at > 60:  # the router's per-second counts, past keeping
            self.pruned_at = now
            traffic.prune()

    def read_logs(self) -> None:
        """Every deployment's new log lines into the log store (endpoints.logs)."""
        close_old_connections()
        try:
            deployments = (
                Deployment.objects.filter(pk__in=self.held)
                .exclude(state=State.DELETING)
                .select_related("endpoint__compute__cluster")
            )
            logs.stop_following({d.pk for d in deployments})
            for deployment in deployments:
                try:
                    logs.collect(deployment)
                    self.log_errors.pop(deployment.pk, None)
                except Exception as exc:  # the cluster is away: said once, not raised
                    said = kube_client.in_words(exc)
                    if self.log_errors.get(deployment.pk) != said:
                        self.log_errors[deployment.pk] = said
                        log.warning("reading the logs of %s: %s", deployment, said)
        finally:
            close_old_connections()

    # -- on Kubernetes -----------------------------------------------------------------------
    def reconcile_kubernetes(self) -> None:
        """Deployments on clusters: applied once per generation (server-side apply, so a
        runner that restarts applies again harmlessly), then read back: a rollout under
        way every tick, a serving one every KUBE_CHECK seconds."""
        found = Deployment.objects.filter(
            endpoint__compute__kind=ComputeKind.KUBERNETES, pk__in=self.held
        )
        now = time.monotonic()
        for deployment in found.select_related(
            "endpoint__compute__cluster", "endpoint__workspace", "model"
        ):
            target = deployment.endpoint.compute
            # Serving (or failed): read back every KUBE_CHECK seconds, or at its polling
            # interval when it autoscales; a rollout or a scaling under way, every tick.
            scale = _autoscaling(deployment)
            every = KUBE_CHECK
            if scale is not None:
                every = min(KUBE_CHECK, float(scale.get("polling_interval", 1)))
            steady = deployment.state in (State.FAILED, State.SUCCEEDED)
            if steady and now - self.checked.get(deployment.pk, 0) < every:
                continue
            self.checked[deployment.pk] = now
            try:
                self.kube_step(deployment, target)
            except kube.StillLeaving as exc:  # tried again each tick, quietly
                _unchanged(deployment).update(reason=str(exc))
            except Exception as exc:  # the cluster is away or refuses: said, tried again
                why = kube_client.in_words(exc)
                log.warning("deployment %s: the cluster: %s", deployment, why)
                if deployment.state in (State.CREATING, State.UPDATING):
                    _unchanged(deployment).update(reason=f"waiting for the cluster: {why}"[:2000])
        if now - self.routers_read_at >= ROUTER_CHECK:
            self.routers_read_at = now
            self.read_router_addresses()

    def read_router_addresses(self) -> None:
        """Where each cluster's own router (enableInference) takes requests, as its
        Service says now: the scoring URIs shown use it (a load balancer's address may
        come minutes after the install, and may change)."""
        for cluster in Cluster.objects.all():
            if not inference.has_router(cluster.settings or {}):
                continue
            try:
                address = inference.router_address(cluster)
            except Exception as exc:  # the cluster is away: the address last read stays
                log.warning("cluster %s: its router's address: %s", cluster,
                            kube_client.in_words(exc))  # fmt: skip
                continue
            if address and address != cluster.router_url:
                Cluster.objects.filter(pk=cluster.pk).update(router_url=address)
                log.info("cluster %s: its router takes requests at %s", cluster, address)

    def kube_step(self, deployment: Deployment, target: Any) -> None:
        if deployment.state == State.DELETING:
            kube.remove(deployment, target)
            for memory in (self.applied, self.reach, self.checked, self.applied_on_server):
                memory.pop(deployment.pk, None)
            deployment.delete()
            return
        scaled = self.scaling.get(deployment.pk)
        if self.applied.get(deployment.pk) != deployment.generation and deployment.state in (
            State.CREATING,
            State.UPDATING,
        ):
            self.applied_on_server[deployment.pk] = kube.apply(
                deployment, target, replicas=scaled.replicas if scaled else None
            )
            self.applied[deployment.pk] = deployment.generation
        known = self.reach.get(deployment.pk)
        seen = kube.observe(
            deployment,
            target,
            known[1] if known and known[0] == deployment.generation else "",
            applied=self.applied_on_server.get(deployment.pk, 0),
        )
        if seen.done:
            self.reach[deployment.pk] = (deployment.generation, seen.in_cluster)
            serving = [{"url": kube.proxy_url(deployment, target), "kubernetes": True,
                        "in_cluster": seen.in_cluster, "replicas": seen.ready}]  # fmt: skip
            if deployment.state != State.SUCCEEDED:
                kube.remove(deployment, target, keep_generation=deployment.generation)
                log.info("deployment %s: generation %d serves", deployment, deployment.generation)
            _unchanged(deployment).update(
                state=State.SUCCEEDED, error_code="", reason="", instances=serving
            )
            if deployment.state in (State.SUCCEEDED, State.SCALING):
                self.autoscale(deployment, seen.ready)
        elif seen.code and deployment.state != State.FAILED:
            self.fail(deployment, seen.code, seen.reason)

    # -- starting ----------------------------------------------------------------------------
    def start(self, deployment: Deployment) -> None:
        """Prepare the generation in the background (its files, its environment: a pip
        install may take minutes), then `follow` starts its instances."""
        folder = self.root / str(deployment.pk) / str(deployment.generation)
        rollout = Rollout(
            deployment.generation,
            [],
            [],
            [],
            time.monotonic() + settings.STUDIO_DEPLOYMENT_PREPARE_SECONDS,
        )
        rollout.preparing = self.preparer.submit(self.prepare, deployment, folder)
        self.rollouts[deployment.pk] = rollout
        log.info("deployment %s: preparing generation %d", deployment, deployment.generation)

    def spawn(self, deployment: Deployment, rollout: Rollout) -> None:
        """Start the prepared generation's instances, each a model server."""
        assert rollout.preparing is not None
        env, python = rollout.preparing.result()
        folder = self.root / str(deployment.pk) / str(deployment.generation)
        document = deployment.document
        count = spec.instances_wanted(document)
        probe = document.get("readiness_probe") or {}
        budget = probe.get("initial_delay", 10) + probe.get("failure_threshold", 30) * probe.get(
            "period", 10
        )
        rollout.deadline = time.monotonic() + budget
        rollout.spawned = True
        rollout.limits = Limits.of(
            kube.resources_of(deployment, deployment.endpoint.compute), deployment_uid(deployment)
        )
        for index in range(count):
            process, url = start_instance(python, env, folder, index, rollout.limits)
            rollout.processes.append(process)
            rollout.urls.append(url)
            rollout.logs.append(folder / f"instance-{index}.log")
        log.info("deployment %s: starting %d instance(s)", deployment, count)

    def prepare(self, deployment: Deployment, folder: Path) -> tuple[dict[str, str], str]:
        """The generation's folder (its code, its model's files), its environment built,
        and what the model server gets: its variables (Azure's, then the deployment's
        own) and its interpreter. In a worker thread: no state of the runner's here."""
        try:
            return self._prepare(deployment, folder)
        finally:
            close_old_connections()

    def _prepare(self, deployment: Deployment, folder: Path) -> tuple[dict[str, str], str]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, mode=0o700)
        uid = deployment_uid(deployment)
        base, said = server_python(uid)
        if said:
            with open(folder / "storage-initializer.log", "a") as log_file:
                log_file.write(said)
        python = build_environment(deployment.environment_used, folder, base) or base
        if uid is not None and not runnable(python):
            raise NoIsolatedPython(f"its environment's Python ({python}) is closed to other users")
        code = folder / "code"
        code.mkdir()
        document = deployment.document
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(folder),
            "AML_APP_ROOT": str(code),
            "WORKER_COUNT": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if deployment.code:
            with (
                storages["artifacts"].open(deployment.code, "rb") as f,
                tarfile.open(fileobj=f) as archive,
            ):
                archive.extractall(code, filter="data")
            env["AZUREML_ENTRY_SCRIPT"] = document["code_configuration"]["scoring_script"]
        if deployment.model is not None:
            env["AZUREML_MODEL_DIR"] = str(self.fetch_model(deployment, folder / "model-dir"))
        env.update(document.get("environment_variables") or {})
        env[SERVER_KEY_VARIABLE] = server_key(deployment.pk)  # after the user's: not theirs to set
        shutil.copyfile(server.__file__, folder / SERVER)  # its own copy, readable by its uid
        if uid is not None:
            hand_over(folder, uid)
        # What a later runner needs to adopt its instances; the studio's, beside the folder
        # that the deployment's uid owns.
        record = record_of(folder)
        record.write_text(json.dumps({"env": env, "python": python}))
        record.chmod(0o600)
        return env, python

    def fetch_model(self, deployment: Deployment, target: Path) -> Path:
        """The model's files under `target`/<its folder or file name>, as Azure lays them
        out under AZUREML_MODEL_DIR."""
        model = deployment.model
        assert model is not None
        name = PurePosixPath(registry.location_of(model).path.rstrip("/")).name
        files = registry.files(model)
        single = len(files) == 1 and files[0]["path"] == name
        for entry in files:
            destination = target / name if single else target / name / entry["path"]
            destination.parent.mkdir(parents=True, exist_ok=True)
            with registry.open_file(model, entry["path"]) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
        return target

    def follow(self, deployment: Deployment) -> None:
        """A rollout under way: every instance ready, one of them exited, or out of time."""
        rollout = self.rollouts[deployment.pk]
        if rollout.generation != deployment.generation:  # updated again meanwhile
            self.abandon(deployment.pk)
            return
        if not rollout.spawned:
            assert rollout.preparing is not None
            if not rollout.preparing.done():
                if time.monotonic() > rollout.deadline:
                    self.abandon(deployment.pk)
                    self.fail(
                        deployment,
                        "DeploymentPreparationFailed",
                        "preparing it (files, environment) took too long",
                    )
                return
            problem = rollout.preparing.exception()
            if problem is not None:
                self.abandon(deployment.pk)
                code = (
                    "EnvironmentBuildFailed"
                    if isinstance(problem, LaunchError)
                    else "DeploymentPreparationFailed"
                )
                self.fail(deployment, code, f"preparing it failed: {problem}")
                return
            self.spawn(deployment, rollout)
            return
        for process, log_file in zip(rollout.processes, rollout.logs, strict=True):
            if process.poll() is not None:
                code, why = error_of(log_file)
                self.abandon(deployment.pk)
                self.fail(deployment, code, why)
                return
        if all(self.answers(url) for url in rollout.urls):
            del self.rollouts[deployment.pk]
            # The router sends new requests to the new generation from now on; the old
            # one drains what it already has, then stops.
            _unchanged(deployment, rollout.generation).update(
                state=State.SUCCEEDED,
                error_code="",
                reason="",
                instances=[
                    {"url": u, "pid": p.pid}
                    for u, p in zip(rollout.urls, rollout.processes, strict=True)
                ],
            )
            old = self.running.pop(deployment.pk, None)
            if old is not None:
                settings_ = deployment.document.get("request_settings") or {}
                grace = settings_.get("request_timeout_ms", 5000) / 1000 + 1
                self.draining.append((time.monotonic() + grace, old.processes))
            env, python = rollout.preparing.result() if rollout.preparing else ({}, "")
            self.running[deployment.pk] = Running(
                rollout.generation,
                rollout.processes,
                urls=list(rollout.urls),
                python=python,
                env=env,
                folder=self.root / str(deployment.pk) / str(rollout.generation),
                limits=rollout.limits,
            )
            log.info("deployment %s: generation %d serves", deployment, rollout.generation)
        elif time.monotonic() > rollout.deadline:
            self.abandon(deployment.pk)
            self.fail(
                deployment,
                "ReadinessProbeFailed",
                "the model server did not answer its liveness route in time",
            )

    def answers(self, url: str) -> bool:
        try:
            return self.http.get(url + "/").status_code == 200
        except httpx.HTTPError:
            return False

    def keep_up(self, deployment: Deployment) -> None:
        """A deployment that serves: started again when this runner has none of it (it
        just started); an instance that exits or fails its liveness probe restarted, as
        a kubelet would, unless they crash in a loop (then it fails)."""
        running = self.running.get(deployment.pk)
        if running is None and self.adopt(deployment):
            return
        if running is None or running.generation != deployment.generation:
            if running is None:
                stop_orphans(deployment.instances)
            self.start(deployment)
            return
        for process, url in list(zip(running.processes, running.urls, strict=True)):
            why = self.unwell(deployment, running, process, url)
            if why and not self.restart(deployment, running, process, why):
                return
        self.scaled_up(deployment, running)
        self.autoscale(deployment, len(running.processes) + len(running.starting))

    def adopt(self, deployment: Deployment) -> bool:
        """The model servers a previous runner left serving (the studio was killed): taken
        over as they are, so the router's requests to them never fail, rather than stopped
        and started anew. False when they cannot be (gone, or not what was recorded)."""
        folder = self.root / str(deployment.pk) / str(deployment.generation)
        try:
            record = json.loads(record_of(folder).read_text())
        except (OSError, ValueError):
            return False
        processes = adoptable(deployment.instances, folder)
        if processes is None:
            return False
        self.running[deployment.pk] = Running(
            deployment.generation,
            list(processes),  # type: ignore[arg-type] # Popen's interface, as the runner uses it
            urls=[i["url"] for i in deployment.instances],
            python=record["python"],
            env=record["env"],
            folder=folder,
            limits=Limits.of(
                kube.resources_of(deployment, deployment.endpoint.compute),
                deployment_uid(deployment),
            ),
        )
        log.info("deployment %s: adopted %d serving instance(s)", deployment, len(processes))
        return True

    def unwell(
        self, deployment: Deployment, running: Running, process: subprocess.Popen[bytes], url: str
    ) -> str:
        """Why the instance must be restarted, or "": it exited, or its liveness route
        failed `failure_threshold` probes in a row (the first `initial_delay` seconds after
        it joined, then one every `period`, each within `timeout`)."""
        if process.poll() is not None:
            return f"it exited with code {process.returncode}"
        probe = {**spec.Probe().model_dump(), **(deployment.document.get("liveness_probe") or {})}
        now = time.monotonic()
        if now < running.probe_at.setdefault(process.pid, now + probe["initial_delay"]):
            return ""
        running.probe_at[process.pid] = now + probe["period"]
        try:
            alive = self.http.get(url + "/", timeout=probe["timeout"]).status_code == 200
        except httpx.HTTPError:
            alive = False
        failures = running.failures[process.pid] = (
            0 if alive else running.failures.get(process.pid, 0) + 1
        )
        if failures >= probe["failure_threshold"]:
            return f"it failed {failures} liveness probes in a row"
        return ""

    def restart(
        self,
        deployment: Deployment,
        running: Running,
        process: subprocess.Popen[bytes],
        why: str,
    ) -> bool:
        """The instance leaves the router's table and stops; a new one starts in its place
        (serving once it answers). False when that is one restart too many: the
        deployment failed with DeploymentCrashLoopBackOff."""
        index = running.processes.index(process)
        running.processes.pop(index)
        running.urls.pop(index)
        running.failures.pop(process.pid, None)
        running.probe_at.pop(process.pid, None)
        if process.poll() is None:  # it hangs: no use asking it to stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if not self.start_again(deployment, running, index, why):
            return False
        what = f"instance {index} restarted: {why}"
        log.warning("deployment %s: %s", deployment, what)
        entry = {"at": timezone.now().isoformat(), "generation": deployment.generation,
                 "what": what}  # fmt: skip
        deployment.history = [*deployment.history, entry][-services.MAX_HISTORY :]
        _unchanged(deployment).update(history=deployment.history)
        self.publish_instances(deployment, running, done=False)
        return True

    # -- autoscaling (target_utilization) ------------------------------------------------------
    def autoscale(self, deployment: Deployment, replicas: int) -> None:
        """Every polling_interval: the router's counts against the target; the new size,
        if any, applied (processes here, the Deployment's replicas on a cluster)."""
        scale = _autoscaling(deployment)
        if scale is None:
            return
        low, high = int(scale.get("min_instances", 1)), int(scale.get("max_instances", 1))
        memory = self.scaling.setdefault(deployment.pk, Scaling(replicas=replicas))
        interval = float(scale.get("polling_interval", 1))
        now = time.monotonic()
        if now - memory.polled_at < interval:
            return
        memory.polled_at = now
        per = int(
            (deployment.document.get("request_settings") or {}).get(
                "max_concurrent_requests_per_instance", 1
            )
        )
        target_percent = int(scale.get("target_utilization_percentage", 70))
        decision = autoscale.decide(
            replicas,
            traffic.busy(deployment, interval),
            per,
            target_percent,
            low,
            high,
            memory.below,
            settings.STUDIO_SCALE_DOWN_POLLS,
        )
        memory.below = decision.below
        if decision.replicas == replicas:
            return
        what = (
            f"scaled from {replicas} to {decision.replicas} instance(s) "
            f"(utilization {decision.utilization:.0f}%, target {target_percent}%)"
        )
        log.info("deployment %s: %s", deployment, what)
        memory.replicas = decision.replicas
        entry = {
            "at": timezone.now().isoformat(),
            "generation": deployment.generation,
            "what": what,
        }
        _unchanged(deployment).update(
            state=State.SCALING, history=[*deployment.history, entry][-services.MAX_HISTORY :]
        )
        traffic.record_replicas(deployment, decision.replicas)  # the charts' replicas line
        target = deployment.endpoint.compute
        if target.kind == ComputeKind.KUBERNETES:
            self.applied_on_server[deployment.pk] = kube.apply(
                deployment, target, replicas=decision.replicas
            )
        else:
            self.scale_local(deployment, decision.replicas)

    def scale_local(self, deployment: Deployment, replicas: int) -> None:
        """More model servers (serving once they answer), or fewer (the newest leaves the
        router's table first, then finishes what it has, then stops)."""
        running = self.running[deployment.pk]
        assert running.folder is not None
        current = len(running.processes) + len(running.starting)
        for index in range(current, replicas):
            running.starting.append(
                start_instance(running.python, running.env, running.folder, index, running.limits)
            )
        while len(running.processes) + len(running.starting) > max(1, replicas):
            if running.starting:
                terminate([running.starting.pop()[0]])
                continue
            process, url = running.processes.pop(), running.urls.pop()
            grace = (deployment.document.get("request_settings") or {}).get(
                "request_timeout_ms", 5000
            ) / 1000 + 1
            self.draining.append((time.monotonic() + grace, [process]))
            log.info("deployment %s: instance %s leaves", deployment, url)
        self.publish_instances(deployment, running, done=not running.starting)

    def start_again(self, deployment: Deployment, running: Running, index: int, why: str) -> bool:
        """Instance `index` once more, unless instances crash in a loop (more than
        CRASH_LOOP_RESTARTS restarts in CRASH_LOOP_SECONDS): then the deployment fails
        with DeploymentCrashLoopBackOff and the model server's last words."""
        now = time.monotonic()
        running.restarts = [t for t in running.restarts if now - t < CRASH_LOOP_SECONDS]
        running.restarts.append(now)
        if len(running.restarts) > CRASH_LOOP_RESTARTS:
            files = log_files(self.root, deployment)
            _code, said = error_of(files[index]) if index < len(files) else ("", "")
            self.stop(deployment.pk)
            self.fail(
                deployment,
                "DeploymentCrashLoopBackOff",
                f"instances were restarted {len(running.restarts)} times in "
                f"{CRASH_LOOP_SECONDS // 60} minutes; the last time, {why}. {said}".strip(),
            )
            return False
        assert running.folder is not None
        running.starting.append(
            start_instance(running.python, running.env, running.folder, index, running.limits)
        )
        return True

    def scaled_up(self, deployment: Deployment, running: Running) -> None:
        """Instances the autoscaler started that answer now join the router's table."""
        if not running.starting and deployment.state != State.SCALING:
            return
        joined = False
        for process, url in list(running.starting):
            if process.poll() is not None:
                running.starting.remove((process, url))
                index = len(running.processes) + len(running.starting)
                why = f"it exited with code {process.returncode} before it answered"
                log.warning("deployment %s: a starting instance: %s", deployment, why)
                if not self.start_again(deployment, running, index, why):
                    return
            elif self.answers(url):
                running.starting.remove((process, url))
                running.processes.append(process)
                running.urls.append(url)
                joined = True
        if joined or not running.starting:
            self.publish_instances(deployment, running, done=not running.starting)

    def publish_instances(self, deployment: Deployment, running: Running, done: bool) -> None:
        fields: dict[str, Any] = {
            "instances": [
                {"url": u, "pid": p.pid}
                for u, p in zip(running.urls, running.processes, strict=True)
            ]
        }
        if done:
            fields["state"] = State.SUCCEEDED
        _unchanged(deployment).update(**fields)

    def fail(self, deployment: Deployment, code: str, reason: str) -> None:
        """Failed, with Azure's code; a previous generation that serves keeps serving."""
        log.warning("deployment %s failed: %s: %s", deployment, code, reason)
        _unchanged(deployment).update(state=State.FAILED, error_code=code, reason=reason[:2000])

    # -- stopping ----------------------------------------------------------------------------
    def abandon(self, pk: int) -> None:
        rollout = self.rollouts.pop(pk, None)
        if rollout is not None:
            terminate(rollout.processes)

    def stop(self, pk: int) -> None:
        running = self.running.pop(pk, None)
        self.scaling.pop(pk, None)
        if running is not None:
            terminate([*running.processes, *(p for p, _ in running.starting)])

    def stop_all(self) -> None:
        for _deadline, processes in self.draining:
            terminate(processes)
        self.draining = []
        for pk in list(self.rollouts):
            self.abandon(pk)
        for pk in list(self.running):
            self.stop(pk)
        self.http.close()
        kube.stop_watching()
        try:
            self.release()
        except Exception:  # the database is away: the leases run out instead
            log.warning("could not release the deployments' leases", exc_info=True)
        finally:
            close_old_connections()
