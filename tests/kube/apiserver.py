"""A Kubernetes API server for tests, over real HTTP, faithful where the studio depends
on the API's behaviour: resourceVersion on every write, list + watch from a version with
`410 Gone` once it is too old, 404 for a missing namespace, 409 on a name taken or a
stale update, server-side apply (field ownership per manager, conflicts, removal of what
a manager stops applying), merge patches, label selectors, cascading deletes through
ownerReferences, bearer-token authentication and per-resource authorization, and faults
on demand (429, 500). The cluster's own behaviour (scheduler, Job controller, kubelet
and pod logs) is in `tests/kube/cluster.py`.

Written for these tests because the emulators on PyPI fall short (kmock's refused a
namespace POST, and has no resourceVersion, pod logs or server-side apply).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import http.server
import itertools
import json
import re
import socket
import socketserver
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

HISTORY = 1000  # watch events kept: a watch from an older resourceVersion gets 410


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILT_IN = [
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "pods", "Pod", True),
    Kind("", "v1", "configmaps", "ConfigMap", True),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    Kind("", "v1", "services", "Service", True),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", True),
    Kind("", "v1", "events", "Event", True),
    Kind("batch", "v1", "jobs", "Job", True),
    Kind("apps", "v1", "deployments", "Deployment", True),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    Kind(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False
    ),
]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: a=b, a!=b, a (exists), !a."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def leaves(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Field paths of an applied object, down to values (lists are atomic here)."""
    if isinstance(obj, dict) and obj:
        found: dict[tuple[str, ...], Any] = {}
        for key, value in obj.items():
            found.update(leaves(value, (*prefix, key)))
        return found
    return {prefix: obj}


def set_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = copy.deepcopy(value)


def drop_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    trail = []
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            return
        trail.append((obj, key))
        obj = obj[key]
    obj.pop(path[-1], None)
    for parent, key in reversed(trail):  # emptied maps go too, as SSA removes them
        if parent[key] == {}:
            del parent[key]


def _secret_data(kind: Kind, obj: dict[str, Any]) -> None:
    """A Secret's stringData is write-only: the API server keeps it in data, base64."""
    if kind.plural == "secrets" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


IDENTITY = {"apiVersion", "kind", ("metadata", "name"), ("metadata", "namespace")}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    code: int
    times: int


@dataclass
class Store:
    """Objects by (kind plural with group, namespace, name); every write bumps one
    resourceVersion counter and is recorded for watches."""

    kinds: dict[tuple[str, str, str], Kind] = field(default_factory=dict)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    owners: dict[tuple[str, str, str], dict[tuple[str, ...], str]] = field(default_factory=dict)
    history: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)
    version: int = 100
    expired_before: int = 0  # watches from before this version get 410 Gone
    generation: int = 0  # bumped to end every open watch (a dropped connection)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def key(self, kind: Kind, namespace: str, name: str) -> tuple[str, str, str]:
        return (f"{kind.group}/{kind.plural}", namespace if kind.namespaced else "", name)

    def kind_of(self, prefix: str) -> Kind:
        group, plural = prefix.split("/", 1)
        for (g, _, p), kind in self.kinds.items():
            if g == group and p == plural:
                return kind
        raise KeyError(prefix)

    def record(self, event: str, kind: Kind, obj: dict[str, Any]) -> None:
        self.history.append((self.version, f"{kind.group}/{kind.plural}", event, obj))
        del self.history[:-HISTORY]
        self.lock.notify_all()


class ApiServer:
    """The API server: `store` holds the objects, `on_change` hooks let the simulated
    cluster react to writes (a Job created, a Node added)."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.store = Store()
        for kind in BUILT_IN:
            self.register(kind)
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural) refused with 403
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.on_change: list[Callable[[str, Kind, dict[str, Any]], None]] = []
        self.log_source: Callable[[str, str, dict[str, str]], Iterator[bytes]] | None = None
        # The cluster's network, for the service proxy: (namespace, service, its port,
        # method, path, body, content type) -> (status, headers, body).
        self.forward: Callable[..., tuple[int, list[tuple[str, str]], bytes]] | None = None
        self.git_version = "v1.31.0"
        # A kubelet that ends pods gracefully: a running pod that is deleted is only
        # marked (deletionTimestamp) until the kubelet has stopped it and deletes it again
        # with a grace period of 0. Without one, pods go at once.
        self.graceful_pods = False
        # The cluster IP allocator: a Service without spec.clusterIP is given one.
        self.cluster_ips: Callable[[], str] | None = None
        # The node port allocator (the default range, 30000-32767), for NodePort and
        # LoadBalancer Services' ports that name none.
        self.node_ports = itertools.count(30000)
        self.create(self.kind("", "namespaces"), "", {"metadata": {"name": "default"}})
        self.http: socketserver.ThreadingTCPServer | None = None

    def version_info(self) -> dict[str, str]:
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": self.git_version,
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.22.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    # -- kinds ---------------------------------------------------------------------------
    def register(self, kind: Kind) -> None:
        self.store.kinds[(kind.group, kind.version, kind.plural)] = kind

    def kind(self, group: str, plural: str) -> Kind:
        return self.store.kind_of(f"{group}/{plural}")

    # -- reading -------------------------------------------------------------------------
    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        with self.store.lock:
            obj = self.store.objects.get(self.store.key(kind, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
            return copy.deepcopy(obj)

    def count(self, kind: Kind, namespace: str = "") -> int:
        """How many objects of a kind there are (a test's cheap look, no copies)."""
        prefix = f"{kind.group}/{kind.plural}"
        with self.store.lock:
            return sum(1 for k, ns, _ in self.store.objects if k == prefix and ns == namespace)

    def list(self, kind: Kind, namespace: str, selector: str = "") -> dict[str, Any]:
        with self.store.lock:
            prefix = f"{kind.group}/{kind.plural}"
            items = [
                copy.deepcopy(obj)
                for (k, ns, _), obj in sorted(self.store.objects.items())
                if k == prefix
                and (not namespace or ns == namespace)
                and matches(obj["metadata"].get("labels") or {}, selector)
            ]
            return {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.store.version)},
                "items": items,
            }

    # -- writing -------------------------------------------------------------------------
    def _check_namespace(self, kind: Kind, namespace: str) -> None:
        if kind.namespaced:
            ns = self.store.key(self.kind("", "namespaces"), "", namespace)
            if ns not in self.store.objects:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _write(self, event: str, kind: Kind, key: tuple[str, str, str], obj: dict) -> dict:
        self.store.version += 1
        obj["metadata"]["resourceVersion"] = str(self.store.version)
        self.store.objects[key] = obj
        self.store.record(event, kind, copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def create(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.store.lock:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if not meta.get("name"):
                raise ApiError(422, "Invalid", "metadata.name: Required value")
            self._check_namespace(kind, namespace)
            key = self.store.key(kind, namespace, meta["name"])
            if key in self.store.objects:
                raise ApiError(
                    409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists'
                )
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            if kind.namespaced:
                meta["namespace"] = namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            _secret_data(kind, obj)
            spec = obj.get("spec") or {}
            if kind.plural == "services" and not spec.get("clusterIP") and self.cluster_ips:
                spec["clusterIP"] = self.cluster_ips()
                spec["clusterIPs"] = [spec["clusterIP"]]
            self._node_ports(kind, obj, None)
            if kind.plural == "customresourcedefinitions":
                self._register_crd(obj)
            created = self._write("ADDED", kind, key, obj)
        self._changed("ADDED", kind, created)
        return created

    def _node_ports(self, kind: Kind, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        """A NodePort or LoadBalancer Service's ports get node ports (kept across updates,
        as the allocator keeps them); a ClusterIP Service's have none."""
        if kind.plural != "services":
            return
        spec = obj.get("spec") or {}
        earlier = {
            p.get("port"): p.get("nodePort")
            for p in ((before or {}).get("spec") or {}).get("ports") or []
        }
        for port in spec.get("ports") or []:
            if spec.get("type") in ("NodePort", "LoadBalancer"):
                port.setdefault("nodePort", earlier.get(port.get("port")) or next(self.node_ports))
            else:
                port.pop("nodePort", None)

    def replace(self, kind: Kind, namespace: str, name: str, body: dict) -> dict[str, Any]:
        with self.store.lock:
            key = self.store.key(kind, namespace, name)
            current = self.store.objects.get(key)
            if current is None:
                raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent and sent != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            obj = copy.deepcopy(body)
            for kept in ("uid", "creationTimestamp", "namespace", "name"):
                if kept in current["metadata"]:
                    obj.setdefault("metadata", {})[kept] = current["metadata"][kept]
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            updated = self._write("MODIFIED", kind, key, obj)
        self._changed("MODIFIED", kind, updated)
        return updated

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        body: dict,
        content_type: str,
        manager: str,
        force: bool,
    ) -> dict[str, Any]:
        if content_type.startswith("application/apply-patch"):
            return self.apply(kind, namespace, name, body, manager, force)
        with self.store.lock:
            current = self.get(kind, namespace, name)
            merged = merge_patch(current, body)
            merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self.replace(kind, namespace, name, merged)

    def apply(
        self, kind: Kind, namespace: str, name: str, body: dict, manager: str, force: bool
    ) -> dict[str, Any]:
        """Server-side apply: the manager owns exactly the fields it applied; a field
        another manager owns with another value is a conflict unless forced; a field the
        manager applied before and no longer does is removed."""
        if not manager:
            raise ApiError(422, "Invalid", "PATCH with apply requires a fieldManager")
        with self.store.lock:
            key = self.store.key(kind, namespace, name)
            applied = {p: v for p, v in leaves(body).items() if p not in IDENTITY and p}
            if key not in self.store.objects:
                created = self.create(kind, namespace, body)
                self.store.owners[key] = dict.fromkeys(applied, manager)
                return created
            obj = copy.deepcopy(self.store.objects[key])
            owners = self.store.owners.setdefault(key, {})
            current = leaves(obj)
            conflicts = [
                ".".join(path)
                for path, value in applied.items()
                if owners.get(path, manager) != manager and current.get(path) != value
            ]
            if conflicts and not force:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Apply failed with {len(conflicts)} conflict(s): conflict with "
                    f'"{owners[tuple(conflicts[0].split("."))]}": {", ".join(conflicts)}',
                )
            for path, owner in list(owners.items()):
                if owner == manager and path not in applied:
                    drop_path(obj, path)
                    del owners[path]
            for path, value in applied.items():
                set_path(obj, path, value)
                owners[path] = manager
            _secret_data(kind, obj)
            self._node_ports(kind, obj, self.store.objects[key])
            if obj == self.store.objects[key]:
                return copy.deepcopy(obj)  # nothing changed: no new resourceVersion
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            updated = self._write("MODIFIED", kind, key, obj)
        self._changed("MODIFIED", kind, updated)
        return updated

    def delete(
        self, kind: Kind, namespace: str, name: str, grace: int | None = None
    ) -> dict[str, Any]:
        """Deletes the object and, at once, what it owns. A pod bound to a node and not
        ended is only marked for deletion, as a real API server does, unless `grace` is
        0: its kubelet stops it, then deletes it with a grace period of 0."""
        with self.store.lock:
            key = self.store.key(kind, namespace, name)
            obj = self.store.objects.get(key)
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
            if (
                kind.plural == "pods"
                and self.graceful_pods
                and grace != 0
                and obj["spec"].get("nodeName")
                and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ):
                if obj["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(obj)  # already terminating
                marked = copy.deepcopy(obj)
                marked["metadata"]["deletionTimestamp"] = now_rfc3339()
                marked["metadata"]["deletionGracePeriodSeconds"] = (
                    grace if grace is not None
                    else int(obj["spec"].get("terminationGracePeriodSeconds", 30))
                )  # fmt: skip
                terminating = self._write("MODIFIED", kind, key, marked)
            else:
                terminating = None
                del self.store.objects[key]
                self.store.owners.pop(key, None)
                self.store.version += 1
                obj["metadata"]["resourceVersion"] = str(self.store.version)
                self.store.record("DELETED", kind, copy.deepcopy(obj))
                dependents = [
                    (self.store.kind_of(k), ns, n)
                    for (k, ns, n), other in self.store.objects.items()
                    if any(
                        ref.get("uid") == obj["metadata"]["uid"]
                        for ref in other["metadata"].get("ownerReferences") or []
                    )
                    or (kind.plural == "namespaces" and ns == name)
                ]
        if terminating is not None:
            self._changed("MODIFIED", kind, terminating)
            return terminating
        self._changed("DELETED", kind, obj)
        for dependent_kind, ns, n in dependents:  # garbage collection, at once
            with contextlib.suppress(ApiError):
                self.delete(dependent_kind, ns, n)
        return obj

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.register(
                Kind(
                    spec["group"],
                    version["name"],
                    spec["names"]["plural"],
                    spec["names"]["kind"],
                    spec["scope"] == "Namespaced",
                )
            )

    def _changed(self, event: str, kind: Kind, obj: dict[str, Any]) -> None:
        for hook in self.on_change:
            hook(event, kind, obj)

    # -- watching ------------------------------------------------------------------------
    def events_since(
        self,
        kind: Kind,
        namespace: str,
        since: int,
        selector: str,
        stop: threading.Event,
        timeout: float,
    ) -> Iterator[dict[str, Any]]:
        prefix = f"{kind.group}/{kind.plural}"
        deadline = time.monotonic() + timeout
        with self.store.lock:
            generation = self.store.generation
            oldest = self.store.history[0][0] - 1 if self.store.history else self.store.version
            oldest = max(oldest, self.store.expired_before)
            if since < oldest:
                message = f"too old resource version: {since} ({oldest})"
                yield {"type": "ERROR", "object": ApiError(410, "Expired", message).status()}
                return
        while (
            not stop.is_set()
            and time.monotonic() < deadline
            and generation == self.store.generation
        ):
            with self.store.lock:
                # The history is in version order: start after `since`, not at the top.
                start = bisect.bisect_right(self.store.history, since, key=lambda e: e[0])
                newer = self.store.history[start:]
                pending = [(version, event, obj) for version, k, event, obj in newer if k == prefix]
                if not pending:
                    if newer:
                        since = newer[-1][0]  # other kinds' events: seen, not ours
                    self.store.lock.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    continue
            for version, event, obj in pending:
                since = version
                meta = obj["metadata"]
                if namespace and meta.get("namespace") != namespace:
                    continue
                if matches(meta.get("labels") or {}, selector):
                    yield {"type": event, "object": obj}

    # -- serving -------------------------------------------------------------------------
    def start(self) -> str:
        server = self

        class Handler(RequestHandler):
            api = server

        self.http = ThreadingServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True, name="fake-k8s").start()
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def stop(self) -> None:
        if self.http is not None:
            self.http.closing.set()
            self.http.shutdown()
            self.http.server_close()
        with self.store.lock:
            self.store.lock.notify_all()

    def interrupt_watches(self, expire: bool = False) -> None:
        """End every open watch, as a restarted API server or a network blip would; with
        expire, also forget the history, so resuming from an old version gets 410."""
        with self.store.lock:
            self.store.generation += 1
            if expire:
                self.store.expired_before = self.store.version
                self.store.history.clear()
            self.store.lock.notify_all()

    def fail_next(self, method: str, path: str, code: int, times: int = 1) -> None:
        """Answer the next `times` requests matching with `code` (429, 500, ...)."""
        self.faults.append(Fault(method, re.compile(path), code, times))

    def kubeconfig(self, url: str, token: str | None = None) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "studio", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "studio"}}],
            "current-context": "fake",
        }


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.closing = threading.Event()


PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
    r"(?:/(?P<sub>status|log))?$"
)
# The service proxy: /api/v1/namespaces/<ns>/services/[http:]<name>[:<port>]/proxy/<path>
PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?:(?P<scheme>https?):)?(?P<name>[^/:]+)"
    r"(?::(?P<port>[^/]+))?/proxy(?P<rest>/.*)?$"
)
VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class RequestHandler(http.server.BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold each answer 40 ms (a real API server has no such wait).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.handle_api("GET")

    def do_POST(self) -> None:
        self.handle_api("POST")

    def do_PUT(self) -> None:
        self.handle_api("PUT")

    def do_PATCH(self) -> None:
        self.handle_api("PATCH")

    def do_DELETE(self) -> None:
        self.handle_api("DELETE")

    def send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, chunks: Iterator[bytes], content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        if (self.headers.get("Content-Type") or "").endswith("yaml"):
            return yaml.safe_load(raw)
        return json.loads(raw)

    def handle_api(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        url = url._replace(path=url.path.rstrip("/") or "/")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        self.api.requests.append((method, url.path))
        proxied = PROXY.match(url.path)
        body = self.body() if method in ("POST", "PUT", "PATCH") and not proxied else None
        try:
            auth = self.headers.get("Authorization") or ""
            if auth != f"Bearer {self.api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            for fault in self.api.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(url.path):
                    fault.times -= 1
                    raise ApiError(fault.code, "Injected", f"injected fault {fault.code}")
            if url.path == "/version":
                return self.send_json(200, self.api.version_info())
            if url.path.endswith("/selfsubjectrulesreviews") and method == "POST":
                return self.send_json(201, self.rules_review(body))
            if url.path.endswith("/selfsubjectaccessreviews") and method == "POST":
                return self.send_json(201, self.access_review(body))
            if proxied:
                return self.proxy(method, proxied)
            self.route(method, url.path, query, body)
        except ApiError as error:
            self.send_json(error.code, error.status())

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        match = PATH.match(path)
        if match is None:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        group = match["group"] or ""
        version = match["core"] or match["version"]
        kind = self.api.store.kinds.get((group, version, match["plural"]))
        if kind is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        namespace, name, sub = match["ns"] or "", match["name"], match["sub"]
        watching = query.get("watch") in ("true", "1")
        verb = "watch" if watching else ("list" if method == "GET" and not name else VERBS[method])
        if (verb, kind.plural) in self.api.forbidden:
            raise ApiError(
                403,
                "Forbidden",
                f'{kind.plural} is forbidden: User "studio" cannot {verb} resource "{kind.plural}"',
            )
        selector = query.get("labelSelector", "")
        if sub == "log":
            return self.logs(namespace, name, query)
        if method == "GET" and watching:
            since = int(query.get("resourceVersion") or self.api.store.version)
            events = self.api.events_since(
                kind,
                namespace,
                since,
                selector,
                self.server.closing,  # type: ignore[attr-defined]
                float(query.get("timeoutSeconds") or 300),
            )
            return self.stream((json.dumps(e).encode() + b"\n" for e in events), "application/json")
        if method == "GET":
            found = (
                self.api.get(kind, namespace, name)
                if name
                else self.api.list(kind, namespace, selector)
            )
            return self.send_json(200, found)
        if method == "POST":
            return self.send_json(201, self.api.create(kind, namespace, body))
        if method == "PUT":
            return self.send_json(200, self.api.replace(kind, namespace, name, body))
        if method == "PATCH":
            patched = self.api.patch(
                kind,
                namespace,
                name,
                body,
                self.headers.get("Content-Type") or "",
                query.get("fieldManager", ""),
                query.get("force") == "true",
            )
            return self.send_json(200, patched)
        if method == "DELETE":
            options = self.body() or {}  # DeleteOptions
            grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
            deleted = self.api.delete(kind, namespace, name, None if grace is None else int(grace))
            return self.send_json(200, deleted)
        raise ApiError(405, "MethodNotAllowed", method)

    def proxy(self, method: str, match: re.Match[str]) -> None:
        """The API server's service proxy: the request, as sent, to a ready pod the
        Service selects (on the pod's address and the port the Service targets); 503 when
        none is ready, as Kubernetes answers."""
        if self.api.forward is None:
            raise ApiError(503, "ServiceUnavailable", "no kubelet")
        service = self.api.get(self.api.kind("", "services"), match["ns"], match["name"])
        wanted = match["port"]
        port = next(
            (
                p
                for p in service["spec"]["ports"]
                if wanted in (None, p.get("name"), str(p["port"]))
            ),
            None,
        )
        if port is None:
            raise ApiError(404, "NotFound", f"no port {wanted} on service {match['name']}")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        # As kube-apiserver does: the request's own headers go on, but for its credentials
        # (its authentication filter drops Authorization) and the hop-by-hop ones.
        dropped = {"authorization", "host", "content-length", "connection", "keep-alive",
                   "transfer-encoding", "upgrade", "proxy-connection", "te", "trailer"}  # fmt: skip
        sent = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        status, headers, content = self.api.forward(
            match["ns"], service, port, method, match["rest"] or "/", raw, sent
        )
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def logs(self, namespace: str, name: str, query: dict[str, str]) -> None:
        pod = self.api.get(self.api.kind("", "pods"), namespace, name)
        if self.api.log_source is None:
            raise ApiError(400, "BadRequest", "no kubelet")
        chunks = self.api.log_source(namespace, pod["metadata"]["name"], query)
        self.stream(chunks, "text/plain")

    def rules_review(self, body: Any) -> dict[str, Any]:
        rules = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
        if self.api.forbidden:
            verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
            rules = [
                {
                    "verbs": [v for v in verbs if (v, kind.plural) not in self.api.forbidden],
                    "apiGroups": [kind.group],
                    "resources": [kind.plural],
                }
                for kind in self.api.store.kinds.values()
            ]
        return {
            **body,
            "status": {"resourceRules": rules, "nonResourceRules": [], "incomplete": False},
        }

    def access_review(self, body: Any) -> dict[str, Any]:
        attrs = body["spec"]["resourceAttributes"]
        allowed = (attrs.get("verb"), attrs.get("resource")) not in self.api.forbidden
        return {**body, "status": {"allowed": allowed}}
