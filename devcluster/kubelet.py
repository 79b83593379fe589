"""The process kubelet: the one part of the dev cluster that is ours. It runs any number
of nodes in this process, each with an identity of its own (a client certificate for
system:node:<name>, which the Node authorizer and NodeRestriction admission hold to its
own Node and pods): it registers the Node with the labels, taints and allocatable
resources a test asks for, renews its Lease, watches the pods the real scheduler binds to
it and runs them (devcluster.pods), and serves the kubelet's HTTPS API on a port of its
own (`/containerLogs/...`, which `pods/log` and `kubectl logs` reach through the API
server)."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import itertools
import os
import platform
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devcluster.api import Api, ApiError, informer
from devcluster.network import Addresses
from devcluster.pki import Authority
from devcluster.pods import Pod
from devcluster.volumes import Volumes

REGISTRY = "registry.kube.test"
LEASE_SECONDS = 40


def micro(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Images:
    """What pulling an image does on this kubelet, which runs none: `*:unpullable` fails
    (a wrong name), `*:flaky` fails once on each node then pulls (a registry's 429), and an
    image of the cluster's own registry pulls once something pushed it (a file in
    `registry`), and `*:no-python` has no `python` to run. `entrypoints` stand in for
    images whose program this host has not; `interpreters` are images whose `python` is an
    interpreter of this host."""

    registry: Path
    entrypoints: dict[str, list[str]] = field(default_factory=dict)
    interpreters: dict[str, str] = field(default_factory=lambda: {"kubestudio": sys.executable})
    tried: set[tuple[str, str]] = field(default_factory=set)

    def pull(self, image: str, node: str) -> str | None:
        failed = f'Failed to pull image "{image}": rpc error: code = '
        if image.endswith(":unpullable"):
            return failed + f'NotFound desc = failed to pull and unpack image "{image}": not found'
        if image.endswith(":flaky") and (image, node) not in self.tried:
            self.tried.add((image, node))
            return failed + (
                "Unknown desc = failed to pull and unpack image: unexpected status "
                "from GET request: 429 Too Many Requests"
            )
        if image.startswith(REGISTRY + "/") and not self.pushed(image):
            return failed + f'NotFound desc = failed to pull and unpack image "{image}": not found'
        return None

    def pushed(self, image: str) -> bool:
        return (self.registry / image.replace("/", "%")).exists()

    def entrypoint(self, image: str) -> list[str]:
        return list(self.entrypoints.get(image.split(":")[0], []))

    def program(self, image: str, program: str) -> str:
        """The host program that runs `program` of the image (OSError: the image has none)."""
        if image.endswith(":no-python") and program in ("python", "python3"):
            raise OSError(f'exec: "{program}": executable file not found in $PATH')
        interpreter = self.interpreters.get(image.split(":")[0])
        return interpreter if interpreter and program in ("python", "python3") else program


class Node:
    def __init__(
        self,
        kubelet: Kubelet,
        index: int,
        name: str,
        labels: dict[str, str],
        taints: list[dict[str, str]],
        allocatable: dict[str, str],
    ) -> None:
        self.kubelet, self.index, self.name = kubelet, index, name
        self.labels, self.taints, self.allocatable = labels, taints, allocatable
        self.address = kubelet.addresses.node(index)
        ca = kubelet.ca
        self.api = Api(
            kubelet.server,
            str(ca.path),
            ca.issue(f"node-{name}", f"system:node:{name}", ("system:nodes",)),
        )
        self.pods: dict[str, Pod] = {}  # by uid
        self.by_name: dict[tuple[str, str], Pod] = {}
        self.pod_cidr = ""
        self.next_host = 2
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        serving = ca.issue(f"kubelet-{name}", name, hosts=(self.address, name))
        self.server = _LogServer((self.address, 0), _Handler, self)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.path))
        context.load_cert_chain(serving.cert, serving.key)
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's kubelet-client certificate
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def start(self) -> None:
        threading.Thread(
            target=self.server.serve_forever, daemon=True, name=f"kubelet-api {self.name}"
        ).start()
        self._register()
        threading.Thread(target=self._renew, daemon=True, name=f"lease {self.name}").start()
        informer(
            self.api,
            "/api/v1/pods",
            {"fieldSelector": f"spec.nodeName={self.name}"},
            self._pod,
            self.stopped,
            f"pods {self.name}",
        )

    # -- the Node and its Lease -------------------------------------------------------------
    def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": self.taints} if self.taints else {},
        }
        try:
            node = self.api.call("POST", "/api/v1/nodes", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
            node = self.api.call("GET", f"/api/v1/nodes/{self.name}")
        self.pod_cidr = (node.get("spec") or {}).get("podCIDR", "")
        self.api.merge(f"/api/v1/nodes/{self.name}/status", {"status": self._status()})

    def _status(self) -> dict[str, Any]:
        stamp = micro()[:19] + "Z"
        conditions = [
            (kind, "False", f"KubeletHasSufficient{word}", f"kubelet has sufficient {word.lower()}")
            for kind, word in (
                ("MemoryPressure", "Memory"),
                ("DiskPressure", "Disk"),
                ("PIDPressure", "PID"),
            )
        ] + [("Ready", "True", "KubeletReady", "kubelet is posting ready status")]
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind, status, reason, message in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": f"devcluster-{self.name}",
                "systemUUID": f"devcluster-{self.name}",
                "bootID": f"devcluster-{self.name}",
                "kernelVersion": platform.release(),
                "osImage": "KubeStudio devcluster (process kubelet)",
                "containerRuntimeVersion": "devcluster://1",
                "kubeletVersion": self.kubelet.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _renew(self) -> None:
        """The node's heartbeat: its Lease, renewed every 10 s (a quarter of its term)."""
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        while not self.stopped.is_set():
            spec = {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": micro(),
            }
            with contextlib.suppress(ApiError, OSError):
                try:
                    self.api.merge(f"{path}/{self.name}", {"spec": spec})
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    node = self.api.call("GET", f"/api/v1/nodes/{self.name}")
                    self.pod_cidr = node["spec"].get("podCIDR", self.pod_cidr)
                    owner = {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.name,
                        "uid": node["metadata"]["uid"],
                    }
                    self.api.call(
                        "POST",
                        path,
                        {"metadata": {"name": self.name, "ownerReferences": [owner]}, "spec": spec},
                    )
            self.stopped.wait(LEASE_SECONDS / 4)

    def cidr(self) -> str:
        if not self.pod_cidr:  # allocated by the controller manager just after registration
            for _ in range(100):
                node = self.api.call("GET", f"/api/v1/nodes/{self.name}")
                self.pod_cidr = (node.get("spec") or {}).get("podCIDR", "")
                if self.pod_cidr:
                    break
                time.sleep(0.1)
        return self.pod_cidr

    # -- pods -------------------------------------------------------------------------------
    def _pod(self, kind: str, obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        uid = meta["uid"]
        with self.lock:
            pod = self.pods.get(uid)
            if kind == "DELETED":
                if pod is not None:
                    self.pods.pop(uid)
                    self.by_name.pop((pod.namespace, pod.name), None)
                    pod.kill()
                return
            if pod is None:
                if status.get("phase") in ("Succeeded", "Failed"):
                    return  # ended before this kubelet (re)started: nothing to run
                pod = Pod(self, obj)
                if meta.get("deletionTimestamp"):
                    pod.deleting.set()  # never started: deleted at once
                self.pods[uid] = pod
                self.by_name[(pod.namespace, pod.name)] = pod
                if not pod.deleting.is_set():
                    threading.Thread(target=pod.run, daemon=True, name=f"pod {pod.name}").start()
                else:
                    threading.Thread(target=pod.terminate, args=(0,), daemon=True).start()
                    return
            pod.pod["metadata"] = meta  # labels and annotations, for the Downward API
        if meta.get("deletionTimestamp") and not pod.terminating:
            pod.terminating = True
            grace = float(meta.get("deletionGracePeriodSeconds", 30))
            threading.Thread(target=pod.terminate, args=(grace,), daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.kill()


class Kubelet:
    def __init__(
        self,
        server: str,
        ca: Authority,
        folder: Path,
        addresses: Addresses,
        images: Images,
        version: str,
        backoff: float = 10.0,
    ) -> None:
        self.server, self.ca, self.addresses = server, ca, addresses
        self.images, self.version, self.backoff = images, version, backoff
        self.pods = str(folder / "pods")
        os.makedirs(self.pods, exist_ok=True)
        os.chmod(self.pods, 0o755)  # noqa: S103 (containers run as other users walk it)
        self.dns_file = str(folder / "cluster-dns")
        self.volumes = Volumes(self)
        self.nodes: dict[str, Node] = {}
        self.indexes = itertools.count()  # a node's address is never a removed node's
        self.service_host = ""  # the `kubernetes` Service's cluster IP

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
        gpus: int = 0,
        pods: int = 110,
    ) -> Node:
        allocatable = {
            "cpu": cpu,
            "memory": memory,
            "pods": str(pods),
            "ephemeral-storage": "100Gi",
        }
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        node = Node(self, next(self.indexes), name, labels or {}, taints or [], allocatable)
        self.nodes[name] = node
        node.start()
        return node

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            node.stop()

    def find(self, namespace: str, name: str) -> Pod | None:
        for node in self.nodes.values():
            with node.lock:
                pod = node.by_name.get((namespace, name))
            if pod is not None:
                return pod
        return None

    def evict(self, namespace: str, name: str, message: str = "") -> None:
        """The node is short of memory: the kubelet evicts the pod (a test's fault)."""
        pod = self.find(namespace, name)
        if pod is None:
            raise LookupError(f"no pod {namespace}/{name} on this kubelet's nodes")
        pod.evict(message or "The node was low on resource: memory.")

    def allocate(self, node: Node) -> str:
        """A pod's address in its node's CIDR (the .1 is the node's own, as a bridge's)."""
        network = ipaddress.ip_network(node.cidr())
        with node.lock:
            used = {pod.address for pod in node.pods.values()}
            for _ in range(network.num_addresses):
                host = node.next_host
                node.next_host = 2 if host >= network.num_addresses - 2 else host + 1
                candidate = str(network[host])
                if candidate not in used:
                    return candidate
        raise ApiError(500, "NoAddress", f"no free address in {network}")

    def service_env(self) -> dict[str, str]:
        """The `kubernetes` Service's variables, as the kubelet gives every container."""
        if not self.service_host:
            return {}
        host = self.service_host
        return {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_SERVICE_PORT_HTTPS": "443",
            "KUBERNETES_PORT": f"tcp://{host}:443",
            "KUBERNETES_PORT_443_TCP": f"tcp://{host}:443",
        }

    @staticmethod
    def user_of(pod_spec: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """The user and groups the container runs as, from its securityContext (over the
        pod's), when this kubelet runs as root and so may switch to them."""
        if os.geteuid() != 0:
            return {}
        pod_context = pod_spec.get("securityContext") or {}
        context = {**pod_context, **(spec.get("securityContext") or {})}
        if context.get("runAsUser") is None:
            return {}
        groups = [
            g
            for g in [pod_context.get("fsGroup"), *(pod_context.get("supplementalGroups") or [])]
            if g is not None
        ]
        return {
            "user": int(context["runAsUser"]),
            "group": int(context.get("runAsGroup") or 0),
            "extra_groups": groups,
        }

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def wait(condition: Any, timeout: float, what: str) -> Any:
    """Until `condition()` is truthy (its value), or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(0.05)


# -- the kubelet's HTTPS API -----------------------------------------------------------------
class _LogServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, node: Node) -> None:
        self.node = node
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LogServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if parts == ["healthz"]:
            return self._send(200, b"ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._send(404, b"404 page not found")
        _, namespace, name, container_name = parts
        with self.server.node.lock:
            pod = self.server.node.by_name.get((namespace, name))
        container = pod.container(container_name) if pod else None
        if pod is None or container is None:
            return self._send(
                404, f'pod "{name}" or container "{container_name}" not found'.encode()
            )
        instance = container.previous if query.get("previous") == "true" else container.current
        if instance is None:
            if query.get("previous") == "true":
                message = (
                    f'previous terminated container "{container.name}" in pod "{name}" not found'
                )
            else:
                message = (
                    f'container "{container.name}" in pod "{name}" '
                    "is waiting to start: ContainerCreating"
                )
            return self._send(400, message.encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        with contextlib.suppress(OSError):
            for chunk in stream(instance, query):
                self.wfile.write(chunk)
                self.wfile.flush()
        self.close_connection = True

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def stream(instance: Any, query: dict[str, str]) -> Any:
    """A container's log as the kubelet serves it: `sinceTime` (RFC 3339), `sinceSeconds`,
    `tailLines`, `timestamps` (RFC 3339 with nanoseconds), `limitBytes`, `follow`."""
    since = 0.0
    if query.get("sinceTime"):
        since = datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00")).timestamp()
    if query.get("sinceSeconds"):
        since = time.time() - int(query["sinceSeconds"])
    timestamps = query.get("timestamps") == "true"
    follow = query.get("follow") == "true"
    left = int(query["limitBytes"]) if query.get("limitBytes") else None
    sent = max(0, len(instance.lines) - int(query["tailLines"])) if query.get("tailLines") else 0
    while True:
        finished = instance.done.is_set()
        lines = instance.lines[sent:]
        sent += len(lines)
        for at, line in lines:
            if at < since:
                continue
            prefix = b""
            if timestamps:
                whole = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                prefix = f"{whole}.{int((at % 1) * 1e9):09d}Z ".encode()
            chunk = prefix + line + b"\n"
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            yield chunk
            if left is not None and left <= 0:
                return
        if not follow or finished:
            return
        instance.done.wait(0.05)
