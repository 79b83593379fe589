"""One pod, as the process kubelet runs it: its volumes as folders of a sandbox, its init
containers in order, then its containers as processes of this host, probed, restarted as
its restartPolicy says, and stopped as a graceful deletion asks; its status written to
the API server as a kubelet writes it (`pods/status`, the whole of it each time).

A container path under a volume's mountPath is rewritten to the sandbox (in the
container's environment, command, arguments and working directory): this kubelet cannot
remount the host's file system. Images are not pulled; a container runs this host's
programs, but for the images a test names (`ImageRules`). The container's memory limit
is held as a cgroup would: its processes together past it are killed, OOMKilled.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from devcluster import probes
from devcluster.api import ApiError
from devcluster.network import NSS_WRAPPER

if TYPE_CHECKING:
    from devcluster.kubelet import Node

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
# The kubelet's log tail for FallbackToLogsOnError: 80 lines, 2048 bytes at most.
TAIL_LINES, TAIL_BYTES = 80, 2048


def quantity(value: Any) -> float:
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Instance:
    """One run of a container: its process and what it printed."""

    process: subprocess.Popen[bytes] | None = None
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    started: str = ""
    oom_killed: bool = False


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool = False
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    ready: bool = False
    current: Instance | None = None
    previous: Instance | None = None
    # The environment its process started with: an exec (a probe, a hook) runs in it, as
    # in a container, even once a Secret it came from is gone.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
            "lastState": self.last,
            **(
                {"containerID": f"devcluster://{self.current.process.pid}"}
                if self.current and self.current.process
                else {}
            ),
        }


class Pod:
    """The kubelet's pod worker: `run` in a thread of its own until the pod is gone."""

    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        spec = pod["spec"]
        self.inits = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.address = ""
        self.sandbox = ""
        self.paths: dict[str, str] = {}
        self.phase = "Pending"
        self.reason = self.message = ""
        self.initialized = False
        self.disrupted: dict[str, Any] | None = None
        self.terminating = False  # its kubelet has begun the graceful deletion
        self.deleting = threading.Event()  # a graceful deletion: stop, then report
        self.stopped = threading.Event()  # every process has ended
        self.lock = threading.RLock()
        self.published: dict[str, Any] = {}
        self.cleanup: list[str] = []  # folders outside the sandbox (memory-backed volumes)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    def container(self, name: str) -> Container | None:
        if not name and len(self.containers) == 1:
            return self.containers[0]
        return next((c for c in [*self.containers, *self.inits] if c.name == name), None)

    # -- the pod's life ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except ApiError as exc:
            if exc.code not in (404, 409):  # gone meanwhile: nothing to report to
                print(f"devcluster: pod {self.namespace}/{self.name}: {exc}", flush=True)
        finally:
            self.stopped.set()
            for folder in [self.sandbox, *self.cleanup]:
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)

    def _run(self) -> None:
        self.address = self.node.kubelet.allocate(self.node)
        self.sandbox = tempfile.mkdtemp(prefix=f"pod-{self.name[:40]}-", dir=self.node.kubelet.pods)
        os.chmod(self.sandbox, 0o755)  # noqa: S103 (read by the container's own user)
        for each in [*self.inits, *self.containers]:
            each.state = {
                "waiting": {
                    "reason": "PodInitializing"
                    if self.inits and not each.init
                    else "ContainerCreating"
                }
            }
        self.publish()
        if not self._pull():
            return
        self.paths = self.node.kubelet.volumes.mount(self)
        for init in self.inits:
            code = self._start_and_wait(init)
            if code is None:
                return self._end()  # deleted meanwhile
            if code != 0:
                if self.pod["spec"].get("restartPolicy") == "Never":
                    self.phase = "Failed"
                    return self._end()
                init.restarts += 1  # OnFailure / Always: again, as the kubelet does
                return self._run_again()
        self.initialized = True
        threads = [
            threading.Thread(target=self._keep, args=(c,), daemon=True) for c in self.containers
        ]
        self.phase = "Running"
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._end()

    def _run_again(self) -> None:
        if not self.deleting.wait(self.node.kubelet.backoff):
            self._run()

    def _pull(self) -> bool:
        """Each image's pull, as the test's rules say; False: stuck in ImagePullBackOff
        (or deleted while it waits)."""
        for each in [*self.inits, *self.containers]:
            image = str(each.spec.get("image", ""))
            while (message := self.node.kubelet.images.pull(image, self.node.name)) is not None:
                each.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
                self.publish()
                if self.deleting.wait(self.node.kubelet.backoff / 2):
                    self._end()
                    return False
                each.state = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{image}"',
                    }
                }
                self.publish()
                if self.deleting.wait(self.node.kubelet.backoff):
                    self._end()
                    return False
        return True

    def _keep(self, container: Container) -> None:
        """A container, started again when it ends as the restartPolicy says, with the
        kubelet's back-off (doubling, up to 5 minutes) in between."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        backoff = self.node.kubelet.backoff
        while True:
            code = self._start_and_wait(container)
            if code is None or self.deleting.is_set():
                return
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            message = (
                f"back-off {backoff:.0f}s restarting failed container={container.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
            container.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            container.ready = False
            self.publish()
            if self.deleting.wait(backoff):
                return
            backoff = min(backoff * 2, 300.0)
            container.restarts += 1

    def _start_and_wait(self, container: Container) -> int | None:
        """Its exit code; None when it was stopped by the pod's deletion."""
        instance = Instance(started=now())
        if container.current is not None:
            container.previous = container.current
        container.current = instance
        try:
            container.env = self._environment(container.spec)
            instance.process = self._start(container.spec, container.env)
        except OSError as exc:  # the runtime cannot start the command
            container.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(exc),
                    "finishedAt": now(),
                }
            }
            container.last = {"terminated": container.state["terminated"]}
            instance.done.set()
            if not container.init:
                self._settle_phase()
            self.publish()
            return 128
        container.state = {"running": {"startedAt": instance.started}}
        container.ready = False
        self.publish()
        prober = None
        if not container.init:
            prober = probes.Prober(self, container, instance)
            prober.start()
        limit = ((container.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            watch = threading.Thread(target=hold_to_limit, args=(instance, quantity(limit)))
            watch.daemon = True
            watch.start()
        assert instance.process.stdout is not None
        for line in iter(instance.process.stdout.readline, b""):
            instance.lines.append((time.time(), line.rstrip(b"\n")))
        code = instance.process.wait()
        instance.done.set()
        if prober is not None:
            prober.stop()
        container.ready = False
        code = code if code >= 0 else 128 - code
        reason = "OOMKilled" if instance.oom_killed else "Completed" if code == 0 else "Error"
        container.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "message": self._termination(container, code),
                "startedAt": instance.started,
                "finishedAt": now(),
            }
        }
        container.last = {"terminated": container.state["terminated"]}
        if self.deleting.is_set():
            self.publish()
            return None
        if not container.init:
            self._settle_phase()
        self.publish()
        return code

    def _termination(self, container: Container, code: int) -> str:
        spec = container.spec
        local = self.paths.get(spec.get("terminationMessagePath", "/dev/termination-log"), "")
        message = ""
        if local and os.path.exists(local):
            with open(local, encoding="utf-8", errors="replace") as f:
                message = f.read(4096)
        if (
            not message
            and code != 0
            and (spec.get("terminationMessagePolicy") == "FallbackToLogsOnError")
        ):
            lines = container.current.lines if container.current else []
            tail = b"\n".join(line for _, line in lines[-TAIL_LINES:])
            message = tail[-TAIL_BYTES:].decode(errors="replace")
        return message

    def _settle_phase(self) -> None:
        """Succeeded or Failed once every container has ended for good."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always":
            return
        codes = []
        for container in self.containers:
            ended = container.state.get("terminated")
            if ended is None:
                return
            codes.append(ended["exitCode"])
        if policy == "OnFailure" and any(codes):
            return
        self.phase = "Succeeded" if not any(codes) else "Failed"

    def _end(self) -> None:
        if self.deleting.is_set() and self.phase not in ("Succeeded", "Failed"):
            # A pod stopped by its deletion ends Failed, unless every container had
            # succeeded (as the kubelet has done since 1.27).
            codes = [(c.state.get("terminated") or {}).get("exitCode", 1) for c in self.containers]
            self.phase = "Succeeded" if codes and not any(codes) else "Failed"
            if self.pod["spec"].get("restartPolicy", "Always") == "Always":
                self.phase = "Failed" if any(codes) else "Succeeded"
        self.publish()

    # -- stopping ---------------------------------------------------------------------------
    def terminate(self, grace: float) -> None:
        """A graceful deletion: preStop hooks, SIGTERM, SIGKILL once `grace` is over; then
        the pod's final delete, as its kubelet makes it."""
        deadline = time.monotonic() + grace
        self.deleting.set()
        running = [
            c
            for c in [*self.inits, *self.containers]
            if c.current and c.current.process and c.current.process.poll() is None
        ]
        hooks = [
            threading.Thread(target=self._pre_stop, args=(c, grace), daemon=True)
            for c in running
            if not c.init
        ]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(deadline - time.monotonic(), 0))
        for container in running:
            self.signal(container, signal.SIGTERM)
        for container in running:
            assert container.current is not None and container.current.process is not None
            try:
                container.current.process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self.signal(container, signal.SIGKILL)
        self.stopped.wait(max(deadline - time.monotonic(), 0) + 10)
        with contextlib.suppress(ApiError):
            self.node.api.call(
                "DELETE",
                self.path,
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )

    def _pre_stop(self, container: Container, grace: float) -> None:
        hook = (container.spec.get("lifecycle") or {}).get("preStop") or {}
        instance = container.current
        assert instance is not None
        if "sleep" in hook:
            instance.done.wait(min(float(hook["sleep"]["seconds"]), grace))
        elif "exec" in hook:
            process = self.exec(container, hook["exec"]["command"])
            try:
                process.communicate(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def signal(self, container: Container, number: int) -> None:
        instance = container.current
        if instance and instance.process and instance.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(instance.process.pid, number)

    def kill(self) -> None:
        """Every process now (the kubelet stops; nothing is reported)."""
        self.deleting.set()
        for container in [*self.inits, *self.containers]:
            self.signal(container, signal.SIGKILL)

    def evict(self, message: str) -> None:
        """The node is short of a resource: the pod is killed and fails as evicted."""
        self.disrupted = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "TerminationByKubelet",
            "message": message,
            "lastTransitionTime": now(),
        }
        self.phase, self.reason, self.message = "Failed", "Evicted", message
        self.deleting.set()
        for container in [*self.inits, *self.containers]:
            self.signal(container, signal.SIGKILL)
        self.stopped.wait(10)
        self.publish()

    # -- status -----------------------------------------------------------------------------
    def publish(self) -> None:
        """The pod's status as this kubelet sees it, written when it changed."""
        with self.lock:
            status = self._status()
            if status == self.published:
                return
            self.published = status
            try:
                self.node.api.merge(
                    self.path + "/status", {"metadata": {"uid": self.uid}, "status": status}
                )
            except ApiError as exc:
                if exc.code not in (404, 409):  # gone (or another of its name): no one to tell
                    raise

    def _status(self) -> dict[str, Any]:
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        stamp = now()

        def condition(kind: str, true: bool, reason: str = "") -> dict[str, Any]:
            found = {
                "type": kind,
                "status": "True" if true else "False",
                "lastProbeTime": None,
                "lastTransitionTime": stamp,
            }
            return {**found, "reason": reason} if reason and not true else found

        previous = {c["type"]: c for c in self.published.get("conditions") or []}
        conditions = [
            condition("PodReadyToStartContainers", bool(self.address)),
            condition(
                "Initialized", self.initialized or not self.inits, "ContainersNotInitialized"
            ),
            condition("Ready", ready, "ContainersNotReady"),
            condition("ContainersReady", ready, "ContainersNotReady"),
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": stamp,
            },
        ]
        if self.disrupted:
            conditions.append(self.disrupted)
        for each in conditions:  # a transition's time is when its status last changed
            old = previous.get(each["type"])
            if old and old["status"] == each["status"]:
                each["lastTransitionTime"] = old["lastTransitionTime"]
        host = self.node.address
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "startTime": self.published.get("startTime") or stamp,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.address:
            status["podIP"] = self.address
            status["podIPs"] = [{"ip": self.address}]
        if self.reason:
            status.update(reason=self.reason, message=self.message)
        qos = (self.pod.get("status") or {}).get("qosClass")
        if qos:
            status["qosClass"] = qos
        return status

    # -- processes --------------------------------------------------------------------------
    def port(self, port: Any) -> int:
        """A port by number, or by the name a container gives it."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for container in self.pod["spec"]["containers"]:
            for each in container.get("ports") or []:
                if each.get("name") == port:
                    return int(each["containerPort"])
        raise ValueError(f"no port named {port} in the pod")

    def exec(self, container: Container, command: list[str]) -> subprocess.Popen[bytes]:
        """A command in the container (an exec probe's, a hook's)."""
        spec = {**container.spec, "command": command, "args": []}
        return self._start(spec, container.env or self._environment(spec), quiet=True)

    def _environment(self, spec: dict[str, Any]) -> dict[str, str]:
        """A container's env: the Downward API, ConfigMaps, Secrets, as it starts."""
        kubelet = self.node.kubelet
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOSTNAME": self.name,
            **kubelet.service_env(),
        }
        if NSS_WRAPPER:  # the cluster's DNS names resolve in the pod
            env.update(LD_PRELOAD=NSS_WRAPPER, NSS_WRAPPER_HOSTS=kubelet.dns_file)
        for source in spec.get("envFrom") or []:
            reference = source.get("configMapRef") or source.get("secretRef") or {}
            plural = "configmaps" if "configMapRef" in source else "secrets"
            found = kubelet.volumes.read(
                self, plural, reference["name"], bool(reference.get("optional"))
            )
            for key, value in found.items():
                env[source.get("prefix", "") + key] = value.decode(errors="replace")
        for item in spec.get("env") or []:
            env[item["name"]] = self._value(item, env)
        return env

    def _start(
        self, spec: dict[str, Any], env: dict[str, str], quiet: bool = False
    ) -> subprocess.Popen[bytes]:
        """A container's process in `env`, $(VAR) expanded in its command and args as
        Kubernetes does, paths under mounts made the sandbox's; as its securityContext's
        user when this kubelet may switch to it."""
        kubelet = self.node.kubelet
        image = str(spec.get("image", ""))
        command = spec.get("command") or kubelet.images.entrypoint(image)
        argv = [
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)
            for arg in [*command, *(spec.get("args") or [])]
        ]
        if not argv:
            raise OSError(f'no command for image "{image}" (this kubelet runs no image)')
        argv = argv[:1] + [self._local(arg, above=False) for arg in argv[1:]]
        argv[0] = kubelet.images.program(image, argv[0])
        if shutil.which(argv[0], path=env["PATH"]) is None and not os.path.exists(argv[0]):
            raise OSError(f'exec: "{argv[0]}": executable file not found in $PATH')
        workdir = self._local(spec["workingDir"]) if spec.get("workingDir") else self.sandbox
        os.makedirs(workdir, exist_ok=True)
        user = kubelet.user_of(self.pod["spec"], spec)
        return subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stderr=subprocess.STDOUT,
            stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **user,
        )

    def _value(self, item: dict[str, Any], env: dict[str, str]) -> str:
        source = item.get("valueFrom") or {}
        volumes = self.node.kubelet.volumes
        if "fieldRef" in source:
            return volumes.field(self, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return volumes.resource(self, source["resourceFieldRef"])
        for key, plural in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            if key in source:
                ref = source[key]
                found = volumes.read(self, plural, ref["name"], bool(ref.get("optional")))
                return found.get(ref["key"], b"").decode(errors="replace")
        value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item.get("value", ""))
        return self._local(value)

    def _local(self, value: str, above: bool = True) -> str:
        """A container path as this host's: under a mount, the mount's folder."""
        for path, local in self.paths.items():
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return local + value[len(path) :]
            if above and path.startswith(value.rstrip("/") + "/") and value.startswith("/"):
                return os.path.join(self.sandbox, value.lstrip("/"))  # a folder above mounts
        return value


def hold_to_limit(instance: Instance, limit: float) -> None:
    """The container's memory limit: its processes together past it are all killed, and
    the container ends OOMKilled, as the kernel does to a cgroup."""
    process = instance.process
    assert process is not None
    while not instance.done.wait(0.1) and process.poll() is None:
        try:
            tree = psutil.Process(process.pid)
            used = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        except psutil.Error:
            continue
        if used > limit:
            instance.oom_killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return


def decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (data or {}).items()}
