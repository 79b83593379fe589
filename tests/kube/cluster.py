"""The cluster behind the fake API server: nodes, a scheduler, the Job controller, a
kubelet that really runs each pod's command on this host, and pod logs as the kubelet
reports them (RFC 3339 timestamps, `sinceTime`, `follow`).

A pod's volumes are folders in a sandbox of its own: a container path under a volume's
mountPath (or the termination message path) is rewritten to the sandbox in the
container's environment, the only place this kubelet looks, as it cannot remount the
host's file system. Images are not pulled: the command runs on this host's programs,
except that an image named `*:unpullable` fails to pull, as a wrong name would, and an
image in the cluster's own registry (`registry.kube.test/...`) pulls only once something
pushed it. Kaniko's executor image runs `tests/kube/kaniko.py`, which checks the context
and "pushes" the destination to that registry. Init containers run in order before the
container; a suspended Job gets its pods when it is resumed.

Deployments: the controller makes their pods from the template itself (no ReplicaSet
objects), labelled with the template's hash, and rolls a changed template as the
RollingUpdate strategy says (a new pod ready before an old one goes, with maxUnavailable
0). Each pod gets an address of its own on the loopback network (127.x.y.z), the Downward
API gives it as `status.podIP`, readiness probes (httpGet) are really sent there, and a
container of a restartPolicy Always pod that exits is reported in CrashLoopBackOff with
its last termination (not restarted). A pod with a hostname and a subdomain (an Indexed
Job's, beside its headless Service) is named in the cluster's DNS: a hosts file that its
processes resolve with, through nss_wrapper. The API server's service proxy reaches a ready pod
the Service selects.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import glob
import hashlib
import http.client
import itertools
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devcluster.network import splice
from devcluster.pods import hold_to_limit, quantity
from tests.kube.apiserver import ApiError, ApiServer, Kind, now_rfc3339


def stamp(at: float) -> str:
    whole = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{int((at % 1) * 1e9):09d}Z"


def parse_time(text: str) -> float:
    text = text.rstrip("Z")
    whole, _, fraction = text.partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float(f"0.{fraction}") if fraction else 0.0)


REGISTRY = "registry.kube.test"
# Images whose entrypoint this kubelet replaces by a program of its own (the image's
# command is not on this host).
ENTRYPOINTS = {
    "gcr.io/kaniko-project/executor": [
        sys.executable,
        os.path.join(os.path.dirname(__file__), "kaniko.py"),
    ],
}
# The studio's own image (STUDIO_ROUTER_IMAGE): its `python` is this interpreter, which
# has the studio installed.
STUDIO_IMAGES = {"kubestudio"}


@dataclass
class Running:
    """A pod's container as the kubelet runs it."""

    process: subprocess.Popen[bytes] | None = None
    sandbox: str = ""
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    # Init containers' output, by container name (the log API's ?container=).
    init_lines: dict[str, list[tuple[float, bytes]]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""
    # What a lifecycle hook needs to run as the container does.
    paths: dict[str, str] = field(default_factory=dict)
    address: str = ""
    serving: bool = False  # the container (not an init container) is running
    oom_killed: bool = False  # past its memory limit: killed, as the kernel's cgroup does


class FakeCluster:
    def __init__(self) -> None:
        self.api = ApiServer()
        self.api.graceful_pods = True
        self.api.on_change.append(self._heard)
        self.api.log_source = self.logs
        self.api.forward = self.forward
        self.work: queue.Queue[tuple[str, Kind, dict[str, Any]] | None] = queue.Queue()
        self.pods: dict[tuple[str, str], Running] = {}
        self.lock = threading.RLock()
        self.worker = threading.Thread(target=self._work, daemon=True, name="fake-cluster")
        self.url = ""
        # The storage behind persistent volume claims: a folder per claim, kept until stop.
        self.volumes = tempfile.mkdtemp(prefix="fake-volumes-")
        os.chmod(self.volumes, 0o755)
        # The images pushed to the cluster's registry: a file each, named by the image.
        self.registry = tempfile.mkdtemp(prefix="fake-registry-")
        self.started: set[str] = set()  # the uids of Jobs whose pods were made
        self.terminating: set[str] = set()  # the uids of pods being stopped
        self.turns = itertools.count()  # the service proxy's round robin
        # kube-proxy: each Service's cluster IP, its ports listening on this host.
        self.api.cluster_ips = next_address
        self.service_ports: dict[tuple[str, str], list[socket.socket]] = {}
        self.service_specs: dict[tuple[str, str], str] = {}  # what each one's ports serve
        # Cluster DNS: each pod with a hostname and a subdomain (a headless Service's, as
        # an Indexed Job's pods have) under <hostname>.<subdomain>[.<ns>.svc[.cluster.local]],
        # in a hosts file that nss_wrapper makes the pods' processes resolve with.
        self.dns_file = os.path.join(self.volumes, ".cluster-dns")
        self.dns: dict[tuple[str, str], str] = {}
        Path(self.dns_file).touch()  # nss_wrapper complains of a missing one in every pod

    def start(self) -> FakeCluster:
        self.url = self.api.start()
        self.worker.start()
        return self

    def stop(self) -> None:
        self.work.put(None)
        for key in list(self.service_ports):
            self._close_service(key)
        with self.lock:
            running = list(self.pods.values())
        for pod in running:
            self._kill(pod, "cluster stopped")
        self.api.stop()
        shutil.rmtree(self.volumes, ignore_errors=True)
        shutil.rmtree(self.registry, ignore_errors=True)

    def pushed(self, image: str) -> bool:
        return os.path.exists(os.path.join(self.registry, image.replace("/", "%")))

    def kubeconfig(self, token: str | None = None) -> dict[str, Any]:
        return self.api.kubeconfig(self.url, token)

    # -- nodes ---------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
        gpus: int = 0,
        ready: bool = True,
    ) -> None:
        allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        self.api.create(
            self.api.kind("", "nodes"),
            "",
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                },
                "status": {
                    # As a kubelet reports it; kube-proxy opens node ports on this address.
                    "addresses": [
                        {"type": "InternalIP", "address": next_address()},
                        {"type": "Hostname", "address": name},
                    ],
                    "allocatable": allocatable,
                    "capacity": allocatable,
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            },
        )

    # -- reacting to writes, one at a time, as controllers do ------------------------------
    def _heard(self, event: str, kind: Kind, obj: dict[str, Any]) -> None:
        self.work.put((event, kind, obj))

    def _work(self) -> None:
        while (item := self.work.get()) is not None:
            event, kind, obj = item
            # ApiError: the object went away meanwhile, as in a real cluster.
            with contextlib.suppress(ApiError):
                self._react(event, kind, obj)

    def _react(self, event: str, kind: Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if kind.plural == "jobs" and event in ("ADDED", "MODIFIED"):
            # A suspended Job has no pods until it is resumed (spec.suspend: false).
            if obj["spec"].get("suspend") or meta["uid"] in self.started:
                return
            self.started.add(meta["uid"])
            self._create_pod(obj)
            deadline = obj["spec"].get("activeDeadlineSeconds")
            if deadline:
                timer = threading.Timer(deadline, self._deadline, (meta["namespace"], meta["name"]))
                timer.daemon = True
                timer.start()
        elif kind.plural == "deployments" and event in ("ADDED", "MODIFIED"):
            self._sync_deployment(meta["namespace"], meta["name"])
        elif kind.plural == "services" and event in ("ADDED", "MODIFIED"):
            key = (meta["namespace"], meta["name"])
            if self.service_specs.get(key) != _served(obj):  # new, or its ports changed
                self._close_service(key)
                self._open_service(obj)
        elif kind.plural == "services" and event == "DELETED":
            self._close_service((meta["namespace"], meta["name"]))
        elif kind.plural == "pods" and event == "ADDED":
            self._schedule(obj)
        elif kind.plural == "pods" and event == "MODIFIED" and meta.get("deletionTimestamp"):
            if meta["uid"] not in self.terminating:
                self.terminating.add(meta["uid"])
                threading.Thread(target=self._terminate, args=(obj,), daemon=True).start()
        elif kind.plural == "pods" and event == "DELETED":
            self._name(obj, "")
            with self.lock:
                pod = self.pods.get((meta["namespace"], meta["name"]))
            if pod is not None:
                self._kill(pod, "deleted")
        if kind.plural == "pods" and event in ("MODIFIED", "DELETED"):
            owner = next(iter(meta.get("ownerReferences") or []), {})
            if owner.get("kind") == "Deployment":
                self._sync_deployment(meta["namespace"], owner["name"])
        elif kind.plural == "nodes":
            pods = self.api.list(self.api.kind("", "pods"), "")["items"]
            for pod in pods:
                if not pod["spec"].get("nodeName") and pod["status"].get("phase") == "Pending":
                    self._schedule(pod)

    # -- the Job controller ----------------------------------------------------------------
    def _create_pod(self, job: dict[str, Any], index: int | None = None) -> None:
        """One pod of the Job; an Indexed Job's pods carry their index (label and
        JOB_COMPLETION_INDEX) and the hostname <job>-<index>, and get one each at first."""
        meta, template = job["metadata"], job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        if indexed and index is None:
            for each in range(int(job["spec"].get("completions") or 1)):
                self._create_pod(job, each)
            return
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "batch.kubernetes.io/job-name": meta["name"],
            "job-name": meta["name"],
            "controller-uid": meta["uid"],
        }
        spec = copy.deepcopy(template["spec"])
        if indexed:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
            for container in spec["containers"]:
                container.setdefault("env", []).append(
                    {"name": "JOB_COMPLETION_INDEX", "value": str(index)}
                )
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                 "uid": meta["uid"], "controller": True}  # fmt: skip
        self.api.create(
            self.api.kind("", "pods"),
            meta["namespace"],
            {
                "metadata": {
                    "name": f"{meta['name']}-{'' if index is None else f'{index}-'}"
                    f"{uuid.uuid4().hex[:5]}",
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": spec,
                "status": {"phase": "Pending"},
            },
        )

    # -- the Deployment controller -------------------------------------------------------
    def _sync_deployment(self, namespace: str, name: str) -> None:
        """Pods for the template (its hash a label), rolled a pod at a time: a new one
        made while there are fewer new ones than replicas (one more than replicas at
        most: maxSurge 1), an old one deleted once enough pods are ready without it
        (maxUnavailable 0); then the status, when it changed."""
        try:
            deployment = self.api.get(self.api.kind("apps", "deployments"), namespace, name)
        except ApiError:
            return  # deleted: its pods go with it (ownerReferences)
        spec = deployment["spec"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        pods = [
            p for p in self.api.list(self.api.kind("", "pods"), namespace, selector)["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        wanted = int(spec.get("replicas", 1))
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == digest]
        old = [p for p in pods if p not in new]
        ready = [p for p in pods if _ready(p)]
        if len(new) < wanted and len(pods) < wanted + 1:
            self._create_deployment_pod(deployment, digest)
        for extra in new[wanted:]:  # scaled down
            with contextlib.suppress(ApiError):
                self.api.delete(self.api.kind("", "pods"), namespace, extra["metadata"]["name"])
        # Old pods go not-ready ones first, each only while the rest keep enough ready.
        for pod in sorted(old, key=_ready):
            if len(ready) - (1 if _ready(pod) else 0) < wanted and any(_ready(p) for p in old):
                break
            if _ready(pod):
                ready.remove(pod)
            with contextlib.suppress(ApiError):
                self.api.delete(self.api.kind("", "pods"), namespace, pod["metadata"]["name"])
        # Terminating pods are no longer counted, as a ReplicaSet does not count them.
        live = [
            p for p in self.api.list(self.api.kind("", "pods"), namespace, selector)["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(live),
            "updatedReplicas": sum(
                1 for p in live if p["metadata"]["labels"].get("pod-template-hash") == digest
            ),
            "readyReplicas": sum(1 for p in live if _ready(p)),
            "availableReplicas": sum(1 for p in live if _ready(p)),
        }
        if deployment.get("status") != status:
            with contextlib.suppress(ApiError):
                self._set_status(self.api.kind("apps", "deployments"), deployment, status)

    def _create_deployment_pod(self, deployment: dict[str, Any], digest: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                 "uid": meta["uid"], "controller": True}  # fmt: skip
        labels = {**(template.get("metadata", {}).get("labels") or {}),
                  "pod-template-hash": digest}  # fmt: skip
        self.api.create(
            self.api.kind("", "pods"),
            meta["namespace"],
            {
                "metadata": {
                    "name": f"{meta['name']}-{digest[:5]}-{uuid.uuid4().hex[:5]}",
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {"restartPolicy": "Always", **copy.deepcopy(template["spec"])},
                "status": {"phase": "Pending"},
            },
        )

    def forward(
        self, namespace: str, service: dict[str, Any], port: dict[str, Any], method: str,
        path: str, body: bytes, headers: dict[str, str],
    ) -> tuple[int, list[tuple[str, str]], bytes]:  # fmt: skip
        """The service proxy's request to one of the Service's endpoints: its ready pods
        that are not terminating."""
        selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
        pods = [
            p for p in self.api.list(self.api.kind("", "pods"), namespace, selector)["items"]
            if _ready(p) and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        if not pods:
            message = f'no endpoints available for service "{service["metadata"]["name"]}"'
            return (
                503,
                [("Content-Type", "application/json")],
                json.dumps(
                    {"kind": "Status", "status": "Failure", "message": message, "code": 503}
                ).encode(),
            )
        pod = pods[next(self.turns) % len(pods)]
        target = _port_of(pod, port.get("targetPort", port["port"]))
        connection = http.client.HTTPConnection(pod["status"]["podIP"], target, timeout=60)
        try:
            connection.request(method, path, body, headers)
            answer = connection.getresponse()
            content = answer.read()
            kept = [(k, v) for k, v in answer.getheaders() if k.lower() == "content-type"]
            return answer.status, kept, content
        except OSError as exc:
            return (
                502,
                [("Content-Type", "text/plain")],
                f"error trying to reach service: {exc}".encode(),
            )
        finally:
            connection.close()

    # -- kube-proxy ----------------------------------------------------------------------
    def _open_service(self, service: dict[str, Any]) -> None:
        """The Service's cluster IP answers on its ports: each connection goes to one of
        its ready pods, in turn, as kube-proxy's rules send it; none ready, refused. A
        LoadBalancer's external address is its cluster IP (this host is outside)."""
        meta, spec = service["metadata"], service["spec"]
        address = spec.get("clusterIP")
        if not address or address == "None":
            return
        listeners = []
        for port in spec.get("ports") or []:
            listener = socket.create_server((address, int(port["port"])))
            listeners.append(listener)
            threading.Thread(
                target=self._accept, args=(listener, meta["namespace"], spec, port), daemon=True
            ).start()
        # A NodePort (and a LoadBalancer's node ports) answers on every node's address.
        for node in self.api.list(self.api.kind("", "nodes"), "")["items"]:
            for node_address in node["status"].get("addresses") or []:
                if node_address["type"] != "InternalIP":
                    continue
                for port in spec.get("ports") or []:
                    if not port.get("nodePort"):
                        continue
                    listener = socket.create_server((node_address["address"], port["nodePort"]))
                    listeners.append(listener)
                    threading.Thread(
                        target=self._accept,
                        args=(listener, meta["namespace"], spec, port),
                        daemon=True,
                    ).start()
        self.service_ports[(meta["namespace"], meta["name"])] = listeners
        self.service_specs[(meta["namespace"], meta["name"])] = _served(service)
        ingress = [{"ip": address}] if spec.get("type") == "LoadBalancer" else []
        if ingress != (service.get("status") or {}).get("loadBalancer", {}).get("ingress", []):
            balancer = {"ingress": ingress} if ingress else {}
            with contextlib.suppress(ApiError):
                self._set_status(self.api.kind("", "services"), service, {"loadBalancer": balancer})

    def _close_service(self, key: tuple[str, str]) -> None:
        self.service_specs.pop(key, None)
        for listener in self.service_ports.pop(key, []):
            # Wakes the thread blocked in accept(): a socket closed under it stays bound
            # until accept returns, and the Service's address could not be opened again.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _accept(
        self, listener: socket.socket, namespace: str, spec: dict[str, Any], port: dict[str, Any]
    ) -> None:
        selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the Service went
            pods = [
                p for p in self.api.list(self.api.kind("", "pods"), namespace, selector)["items"]
                if _ready(p) and not p["metadata"].get("deletionTimestamp")
            ]  # fmt: skip
            try:
                if not pods:
                    raise ConnectionRefusedError("no endpoints")
                pod = pods[next(self.turns) % len(pods)]
                target = _port_of(pod, port.get("targetPort", port["port"]))
                upstream = socket.create_connection((pod["status"]["podIP"], target), timeout=5)
            except (OSError, ApiError):
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=splice, args=(client, upstream), daemon=True).start()

    def _job_of(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        name = (pod["metadata"].get("labels") or {}).get("job-name")
        if not name:
            return None
        try:
            return self.api.get(self.api.kind("batch", "jobs"), pod["metadata"]["namespace"], name)
        except ApiError:
            return None

    def _pod_ended(self, pod: dict[str, Any], disrupted: bool) -> None:
        with self.lock:  # the Job controller counts one pod's end at a time
            self._count_end(pod, disrupted)

    def _count_end(self, pod: dict[str, Any], disrupted: bool) -> None:
        job = self._job_of(pod)
        if job is None:
            return
        phase = pod["status"]["phase"]
        policy = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        ignored = disrupted and any(
            rule.get("action") == "Ignore"
            and any(c.get("type") == "DisruptionTarget" for c in rule.get("onPodConditions") or [])
            for rule in policy
        )
        labels = pod["metadata"].get("labels") or {}
        index = labels.get("batch.kubernetes.io/job-completion-index")
        if phase == "Failed" and ignored:  # not counted against backoffLimit: a new pod
            self._create_pod(job, None if index is None else int(index))
            return
        status = dict(job.get("status") or {})
        completions = int(job["spec"].get("completions") or 1)
        if phase == "Succeeded":
            status["succeeded"] = (status.get("succeeded") or 0) + 1
            if status["succeeded"] >= completions:
                status["conditions"] = [{"type": "Complete", "status": "True"}]
        else:
            # backoffLimit 0: the Job fails, and its other pods are stopped.
            for other in self.api.list(
                self.api.kind("", "pods"), pod["metadata"]["namespace"],
                f"job-name={job['metadata']['name']}",
            )["items"]:  # fmt: skip
                if other["metadata"]["name"] != pod["metadata"]["name"] and other["status"].get(
                    "phase"
                ) not in ("Succeeded", "Failed"):
                    with contextlib.suppress(ApiError):
                        self.api.delete(
                            self.api.kind("", "pods"), other["metadata"]["namespace"],
                            other["metadata"]["name"],
                        )  # fmt: skip
            status.update(
                failed=(status.get("failed") or 0) + 1,
                conditions=[
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ],
            )
        if status.get("conditions"):
            status["completionTime"] = now_rfc3339()
        self._set_status(self.api.kind("batch", "jobs"), job, status)

    def _deadline(self, namespace: str, name: str) -> None:
        try:
            job = self.api.get(self.api.kind("batch", "jobs"), namespace, name)
        except ApiError:
            return
        if any(
            c["type"] in ("Complete", "Failed")
            for c in job.get("status", {}).get("conditions") or []
        ):
            return
        self._set_status(
            self.api.kind("batch", "jobs"),
            job,
            {
                **job.get("status", {}),
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            },
        )
        for pod in self.api.list(self.api.kind("", "pods"), namespace, f"job-name={name}")["items"]:
            with contextlib.suppress(ApiError):
                self.api.delete(self.api.kind("", "pods"), namespace, pod["metadata"]["name"])

    def _set_status(self, kind: Kind, obj: dict[str, Any], status: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for _ in range(5):  # optimistic concurrency, as controllers retry a 409
            current = self.api.get(kind, meta.get("namespace", ""), meta["name"])
            current["status"] = status
            try:
                self.api.replace(kind, meta.get("namespace", ""), meta["name"], current)
                return
            except ApiError as error:
                if error.code != 409:
                    raise

    # -- the scheduler -----------------------------------------------------------------------
    def _schedule(self, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        wanted: dict[str, float] = {}
        for container in spec["containers"]:
            for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
                wanted[name] = wanted.get(name, 0) + quantity(value)
            limits = (container.get("resources") or {}).get("limits") or {}
            if "nvidia.com/gpu" in limits:
                wanted["nvidia.com/gpu"] = wanted.get("nvidia.com/gpu", 0) + quantity(
                    limits["nvidia.com/gpu"]
                )
        nodes = self.api.list(self.api.kind("", "nodes"), "")["items"]
        selector = spec.get("nodeSelector") or {}
        reasons: dict[str, int] = {}
        chosen = None
        for node in nodes:
            labels = node["metadata"].get("labels") or {}
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions") or []
            )
            if not ready:
                reasons["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"] = (
                    reasons.get("node(s) had untolerated taint {node.kubernetes.io/not-ready: }", 0)
                    + 1
                )
                continue
            if any(labels.get(k) != v for k, v in selector.items()):
                key = "node(s) didn't match Pod's node affinity/selector"
                reasons[key] = reasons.get(key, 0) + 1
                continue
            free = self._free(node)
            short = [name for name, amount in wanted.items() if amount > free.get(name, 0) + 1e-9]
            if short:
                for name in short:
                    reasons[f"Insufficient {name}"] = reasons.get(f"Insufficient {name}", 0) + 1
                continue
            chosen = node
            break
        meta = pod["metadata"]
        if chosen is None:
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            message = (
                f"0/{len(nodes)} nodes are available: {detail}."
                if nodes
                else ("no nodes available to schedule pods")
            )
            self._patch_pod(
                meta,
                {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": message,
                        }
                    ],
                },
            )
            return
        current = self.api.get(self.api.kind("", "pods"), meta["namespace"], meta["name"])
        current["spec"]["nodeName"] = chosen["metadata"]["name"]
        self.api.replace(self.api.kind("", "pods"), meta["namespace"], meta["name"], current)
        threading.Thread(target=self._run, args=(current,), daemon=True).start()

    def _free(self, node: dict[str, Any]) -> dict[str, float]:
        free = {k: quantity(v) for k, v in node["status"]["allocatable"].items()}
        for pod in self.api.list(self.api.kind("", "pods"), "")["items"]:
            if pod["spec"].get("nodeName") != node["metadata"]["name"]:
                continue
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            for container in pod["spec"]["containers"]:
                for name, value in (
                    (container.get("resources") or {}).get("requests") or {}
                ).items():
                    free[name] = free.get(name, 0) - quantity(value)
        return free

    @staticmethod
    def _container(container: dict[str, Any], state: dict[str, Any], ready: bool = False) -> list:
        """A container status as a kubelet reports it (every required field)."""
        return [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
            }
        ]

    def _patch_pod(self, meta: dict[str, Any], status: dict[str, Any]) -> None:
        pod = self.api.get(self.api.kind("", "pods"), meta["namespace"], meta["name"])
        self._set_status(self.api.kind("", "pods"), pod, {**pod.get("status", {}), **status})

    # -- the kubelet -------------------------------------------------------------------------
    def _run(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        container = pod["spec"]["containers"][0]
        running = Running(sandbox=tempfile.mkdtemp(prefix="pod-"))
        with self.lock:
            self.pods[key] = running
        os.chmod(running.sandbox, 0o755)
        try:
            image = str(container.get("image", ""))
            if image.endswith(":unpullable") or (
                image.startswith(REGISTRY + "/") and not self.pushed(image)
            ):
                message = f'failed to pull image "{container["image"]}": not found'
                waiting = {"waiting": {"reason": "ErrImagePull", "message": message}}
                self._patch_pod(meta, {"containerStatuses": self._container(container, waiting)})
                return
            if str(container.get("image", "")).endswith(":no-python"):
                # An image without the program the command names: the runtime cannot start it.
                message = 'exec: "python3": executable file not found in $PATH'
                terminated = {"exitCode": 128, "reason": "StartError", "message": message}
                ended = {"terminated": {**terminated, "finishedAt": now_rfc3339()}}
                statuses = self._container(container, ended)
                self._patch_pod(meta, {"phase": "Failed", "containerStatuses": statuses})
                self._pod_ended(self.api.get(self.api.kind("", "pods"), *key), disrupted=False)
                return
            creating = {"waiting": {"reason": "ContainerCreating"}}
            address = next_address()
            self._patch_pod(
                meta,
                {
                    "containerStatuses": self._container(container, creating),
                    "podIP": address,
                    "podIPs": [{"ip": address}],
                },
            )
            self._name(pod, address)
            paths = self._mount(pod, running.sandbox)
            running.paths, running.address = paths, address
            done_inits: list[dict[str, Any]] = []
            for init in pod["spec"].get("initContainers") or []:
                if running.stop_reason:
                    return
                process = running.process = self._start(init, paths, meta, running.sandbox, address)
                output, _ = process.communicate()
                running.init_lines[init["name"]] = [
                    (time.time(), line) for line in output.splitlines()
                ]
                if running.stop_reason:
                    return  # deleted or evicted meanwhile
                if process.returncode == 0:
                    completed = {"exitCode": 0, "reason": "Completed",
                                 "finishedAt": now_rfc3339()}  # fmt: skip
                    done_inits.extend(self._container(init, {"terminated": completed}))
                    self._patch_pod(meta, {"initContainerStatuses": done_inits})
                if process.returncode != 0:
                    message = output.decode(errors="replace")[-2000:]
                    terminated = {"exitCode": process.returncode, "reason": "Error",
                                  "message": message, "finishedAt": now_rfc3339()}  # fmt: skip
                    statuses = self._container(init, {"terminated": terminated})
                    self._patch_pod(meta, {"phase": "Failed", "initContainerStatuses": statuses})
                    self._pod_ended(self.api.get(self.api.kind("", "pods"), *key), disrupted=False)
                    return
            if running.stop_reason:
                return
            running.process = self._start(container, paths, meta, running.sandbox, address)
            running.serving = True
            started = {"running": {"startedAt": now_rfc3339()}}
            probe = (container.get("readinessProbe") or {}).get("httpGet")
            statuses = self._container(container, started, ready=not probe)
            ready = [{"type": "Ready", "status": "False" if probe else "True"}]
            self._patch_pod(
                meta, {"phase": "Running", "containerStatuses": statuses, "conditions": ready}
            )
            if probe:
                threading.Thread(
                    target=self._probe, args=(pod, container, address, running), daemon=True
                ).start()
            memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            if memory:
                threading.Thread(
                    target=hold_to_limit, args=(running, quantity(memory)), daemon=True
                ).start()
            assert running.process.stdout is not None
            for line in iter(running.process.stdout.readline, b""):
                running.lines.append((time.time(), line.rstrip(b"\n")))
            code = running.process.wait()
            message_file = paths.get(
                container.get("terminationMessagePath", "/dev/termination-log"), ""
            )
            message = ""
            if message_file and os.path.exists(message_file):
                with open(message_file, encoding="utf-8", errors="replace") as f:
                    message = f.read(4096)
            if (
                not message
                and code != 0
                and (container.get("terminationMessagePolicy") == "FallbackToLogsOnError")
            ):  # the log's tail, as the kubelet gives it: 80 lines, 2048 bytes at most
                tail = b"\n".join(line for _, line in running.lines[-80:])
                message = tail[-2048:].decode(errors="replace")
            if running.stop_reason:
                return  # evicted or deleted: the one who stopped it reports
            reason = "OOMKilled" if running.oom_killed else "Completed" if code == 0 else "Error"
            if pod["spec"].get("restartPolicy") == "Always":
                self._crashed(meta, container, code, message, reason)
                return
            terminated = {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": reason,
                "message": message,
                "finishedAt": now_rfc3339(),
            }
            phase = "Succeeded" if code == 0 else "Failed"
            with contextlib.suppress(ApiError):
                statuses = self._container(container, {"terminated": terminated})
                self._patch_pod(meta, {"phase": phase, "containerStatuses": statuses})
                self._pod_ended(self.api.get(self.api.kind("", "pods"), *key), disrupted=False)
        except ApiError:
            pass  # deleted meanwhile
        finally:
            running.done.set()
            shutil.rmtree(running.sandbox, ignore_errors=True)

    def _probe(
        self, pod: dict[str, Any], container: dict[str, Any], address: str, running: Running
    ) -> None:
        """The readiness probe, sent as the kubelet sends it; Ready once it answers."""
        probe = container["readinessProbe"]
        port = _port_of(pod, probe["httpGet"]["port"])
        if running.done.wait(min(float(probe.get("initialDelaySeconds", 0)), 5)):
            return
        while not running.done.is_set():
            timeout = probe.get("timeoutSeconds", 1)
            connection = (
                # The kubelet checks no certificate in an HTTPS probe.
                http.client.HTTPSConnection(
                    address, port, timeout=timeout, context=ssl._create_unverified_context()
                )
                if probe["httpGet"].get("scheme") == "HTTPS"
                else http.client.HTTPConnection(address, port, timeout=timeout)
            )
            try:
                connection.request("GET", probe["httpGet"].get("path", "/"))
                if 200 <= connection.getresponse().status < 400:
                    started = {"running": {"startedAt": now_rfc3339()}}
                    statuses = self._container(container, started, ready=True)
                    with contextlib.suppress(ApiError):
                        self._patch_pod(
                            pod["metadata"],
                            {"containerStatuses": statuses,
                             "conditions": [{"type": "Ready", "status": "True"}]},
                        )  # fmt: skip
                    return
            except OSError:
                pass
            finally:
                connection.close()
            running.done.wait(min(float(probe.get("periodSeconds", 10)), 0.2))

    def _crashed(
        self, meta: dict[str, Any], container: dict[str, Any], code: int, message: str,
        reason: str,
    ) -> None:  # fmt: skip
        """A restartPolicy Always container that exited: CrashLoopBackOff, with how it
        ended as its last state (this kubelet does not start it again)."""
        last = {"exitCode": code if code >= 0 else 128 - code, "reason": reason,
                "message": message, "finishedAt": now_rfc3339()}  # fmt: skip
        status = self._container(container, {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": "back-off restarting failed container"}})  # fmt: skip
        status[0].update(restartCount=1, lastState={"terminated": last})
        with contextlib.suppress(ApiError):
            self._patch_pod(
                meta,
                {"containerStatuses": status, "conditions": [{"type": "Ready", "status": "False"}]},
            )

    def _start(
        self,
        container: dict[str, Any],
        paths: dict[str, str],
        meta: dict[str, Any],
        sandbox: str,
        address: str = "",
    ) -> subprocess.Popen[bytes]:
        """One container's process: its env with mount paths rewritten, $(VAR) expanded
        in its command and args as Kubernetes does, an image's entrypoint when it has no
        command."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOSTNAME": meta["name"]}
        if NSS_WRAPPER:  # the cluster's DNS names resolve in the pod
            env.update(LD_PRELOAD=NSS_WRAPPER, NSS_WRAPPER_HOSTS=self.dns_file)
        fields = {"status.podIP": address, "metadata.name": meta["name"],
                  "metadata.namespace": meta.get("namespace", "")}  # fmt: skip
        for item in container.get("env") or []:
            reference = (item.get("valueFrom") or {}).get("fieldRef")
            if reference:  # the Downward API
                env[item["name"]] = fields.get(reference["fieldPath"], "")
                continue
            secret = (item.get("valueFrom") or {}).get("secretKeyRef")
            if secret:
                found = self._wait_for("secrets", meta["namespace"], secret["name"])
                env[item["name"]] = base64.b64decode(found["data"][secret["key"]]).decode()
                continue
            env[item["name"]] = _in_sandbox(item.get("value", ""), paths, sandbox)
        image = str(container.get("image", "")).split(":")[0]
        command = container.get("command") or ENTRYPOINTS.get(image, [])
        if image in ENTRYPOINTS:
            env["FAKE_REGISTRY"] = self.registry  # where the stand-in "pushes"
        argv = [
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), arg)
            for arg in [*command, *(container.get("args") or [])]
        ]
        # Paths under mounts in the arguments too (a certificate file, say).
        argv = argv[:1] + [_in_sandbox(arg, paths, sandbox, above=False) for arg in argv[1:]]
        if image in STUDIO_IMAGES and argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return subprocess.Popen(
            argv,
            env=env,
            cwd=sandbox,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _name(self, pod: dict[str, Any], address: str) -> None:
        """The pod's DNS names now point at `address` (none: they are gone), as cluster
        DNS names a headless Service's pods."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if not (spec.get("hostname") and spec.get("subdomain")):
            return
        short = f"{spec['hostname']}.{spec['subdomain']}"
        names = (
            f"{short} {short}.{meta['namespace']}.svc {short}.{meta['namespace']}.svc.cluster.local"
        )
        with self.lock:
            if address:
                self.dns[(meta["namespace"], meta["name"])] = f"{address} {names}"
            elif self.dns.pop((meta["namespace"], meta["name"]), None) is None:
                return
            text = "".join(line + "\n" for line in self.dns.values())
            with open(self.dns_file + ".new", "w") as hosts:
                hosts.write(text)
            os.replace(self.dns_file + ".new", self.dns_file)  # read whole, or not at all

    def _wait_for(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """A ConfigMap or Secret the pod needs: the kubelet retries until it exists (its
        owner may make it just after the pod's Job)."""
        for _ in range(100):
            try:
                return self.api.get(self.api.kind("", plural), namespace, name)
            except ApiError:
                time.sleep(0.05)
        raise ApiError(404, "NotFound", f"{plural} {name} never appeared")

    def _mount(self, pod: dict[str, Any], sandbox: str) -> dict[str, str]:
        """The pod's volumes as folders of the sandbox; returns container path -> local."""
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        paths: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            local = os.path.join(sandbox, mount["mountPath"].lstrip("/"))
            os.makedirs(local, exist_ok=True)
            os.chmod(local, 0o777)
            volume = volumes[mount["name"]]
            if "nfs" in volume:
                # The export is this host's folder of that path (the same storage the
                # studio reads, as an NFS mount would be).
                os.rmdir(local)
                os.symlink(volume["nfs"]["path"], local)
            elif "persistentVolumeClaim" in volume:
                # A claim is storage that outlives the pod: one folder per claim, shared by
                # every pod that mounts it (as ReadWriteMany storage would be).
                claim = volume["persistentVolumeClaim"]["claimName"]
                self.api.get(self.api.kind("", "persistentvolumeclaims"), meta["namespace"], claim)
                shared = os.path.join(self.volumes, meta["namespace"], claim)
                os.makedirs(shared, exist_ok=True)
                os.chmod(shared, 0o777)
                os.rmdir(local)
                os.symlink(shared, local)
            elif "secret" in volume:
                found = self._wait_for("secrets", meta["namespace"], volume["secret"]["secretName"])
                for name, data in (found.get("data") or {}).items():
                    with open(os.path.join(local, name), "wb") as f:
                        f.write(base64.b64decode(data))
            elif "configMap" in volume:
                config = self._wait_for(
                    "configmaps", meta["namespace"], volume["configMap"]["name"]
                )
                for name, text in (config.get("data") or {}).items():
                    with open(os.path.join(local, name), "w", encoding="utf-8") as f:
                        f.write(text)
                for name, data in (config.get("binaryData") or {}).items():
                    with open(os.path.join(local, name), "wb") as f:
                        f.write(base64.b64decode(data))
            paths[mount["mountPath"]] = local
        termination = container.get("terminationMessagePath", "/dev/termination-log")
        paths[termination] = os.path.join(sandbox, "termination-log")
        return paths

    def _terminate(self, pod: dict[str, Any]) -> None:
        """A pod marked for deletion, as its kubelet ends it: the container's preStop
        hook, then SIGTERM, SIGKILL once the grace period is over; then the pod goes."""
        meta = pod["metadata"]
        grace = float(meta.get("deletionGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace
        with self.lock:
            running = self.pods.get((meta["namespace"], meta["name"]))
        if running is not None:
            if running.serving and running.process and running.process.poll() is None:
                self._pre_stop(pod, running, grace)
            self._kill(running, "deleted", max(deadline - time.monotonic(), 0.0))
            running.done.wait(max(deadline - time.monotonic(), 0.0) + 5)
        with contextlib.suppress(ApiError):
            self.api.delete(self.api.kind("", "pods"), meta["namespace"], meta["name"], grace=0)
        self.terminating.discard(meta["uid"])

    def _pre_stop(self, pod: dict[str, Any], running: Running, grace: float) -> None:
        container = pod["spec"]["containers"][0]
        hook = (container.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in hook:
            running.done.wait(min(float(hook["sleep"]["seconds"]), grace))
        elif "exec" in hook:
            action = {**container, "command": hook["exec"]["command"], "args": []}
            process = self._start(
                action, running.paths, pod["metadata"], running.sandbox, running.address
            )
            try:
                process.communicate(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _kill(self, pod: Running, why: str, grace: float = 5.0) -> None:
        pod.stop_reason = pod.stop_reason or why
        if pod.process is not None and pod.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.process.pid, signal.SIGTERM)
            try:
                pod.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGKILL)

    def evict(self, namespace: str, name: str) -> None:
        """A node drain or preemption: the pod is killed and fails as disrupted."""
        with self.lock:
            running = self.pods.get((namespace, name))
        if running is not None:
            self._kill(running, "evicted")
            running.done.wait(10)
        pod = self.api.get(self.api.kind("", "pods"), namespace, name)
        self._set_status(
            self.api.kind("", "pods"),
            pod,
            {
                **pod["status"],
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "EvictionByEvictionAPI",
                    }
                ],
            },
        )
        self._pod_ended(self.api.get(self.api.kind("", "pods"), namespace, name), disrupted=True)

    # -- pod logs ----------------------------------------------------------------------------
    def logs(self, namespace: str, name: str, query: dict[str, str]) -> Iterator[bytes]:
        with self.lock:
            running = self.pods.get((namespace, name))
        if running is None:
            raise ApiError(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        # sinceTime has whole seconds (metav1.Time): a reader resuming must skip what it has.
        since = int(parse_time(query["sinceTime"])) if query.get("sinceTime") else 0.0
        if query.get("sinceSeconds"):
            since = time.time() - int(query["sinceSeconds"])
        timestamps = query.get("timestamps") == "true"
        follow = query.get("follow") == "true"
        source = running.init_lines.get(query.get("container", ""), running.lines)
        sent = 0
        if query.get("tailLines"):
            sent = max(0, len(source) - int(query["tailLines"]))
        while True:
            finished = running.done.is_set() or source is not running.lines
            lines = source[sent:]
            sent += len(lines)
            for at, line in lines:
                if at >= since:
                    yield (f"{stamp(at)} ".encode() if timestamps else b"") + line + b"\n"
            if not follow or finished:
                return
            running.done.wait(0.05)


def _served(service: dict[str, Any]) -> str:
    """What a Service's listeners depend on: its type, address, ports and selector."""
    spec = service.get("spec") or {}
    keys = ("type", "clusterIP", "ports", "selector")
    return json.dumps({k: spec.get(k) for k in keys}, sort_keys=True)


# Pod addresses, unique in the process (a pod of an earlier test's cluster that is still
# stopping never shares one with a new pod) and starting at random, so a pod process that
# an aborted run left behind does not hold the first address of the next run.
_addresses = itertools.count(random.randrange(250**3))
_addresses_lock = threading.Lock()


# Makes a process resolve host names from a hosts file of its own (Debian: libnss-wrapper;
# `make test` installs it). Without it, pods cannot reach each other by name.
NSS_WRAPPER = next(iter(glob.glob("/usr/lib/*/libnss_wrapper.so")), "")


def next_address() -> str:
    with _addresses_lock:
        n = next(_addresses)
    return f"127.{n // 250**2 % 250 + 1}.{n // 250 % 250}.{n % 250 + 1}"


def _in_sandbox(value: str, paths: dict[str, str], sandbox: str, above: bool = True) -> str:
    """A container path as this host's: under a mount, the mount's folder."""
    for path, local in paths.items():
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return local + value[len(path) :]
        if above and path.startswith(value.rstrip("/") + "/") and value.startswith("/"):
            # A folder above mounts (as /data above /data/a): the sandbox's.
            return os.path.join(sandbox, value.lstrip("/"))
    return value


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _port_of(pod: dict[str, Any], port: Any) -> int:
    """A port by number, or by the name a container gives it."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in pod["spec"]["containers"]:
        for each in container.get("ports") or []:
            if each.get("name") == port:
                return int(each["containerPort"])
    raise ApiError(503, "ServiceUnavailable", f"no port named {port} on the pod")
