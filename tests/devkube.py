"""The tests' handle on the real control plane (devcluster): one cluster for the session,
and per test a `RealKube` that reads and writes it as the fake's tests did (`kube.api.get`,
`list`, `create`, `delete` by kind), adds nodes, evicts pods, and at the test's end removes
what the test made (its namespaces, nodes, CRDs and the studio's cluster-wide objects), so
the next test meets the cluster as it started."""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devcluster.api import Api, ApiError
from devcluster.cluster import DevCluster
from tests.faults import FaultProxy

HARNESS = "test-harness"
METHODS = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT",
           "patch": "PATCH", "delete": "DELETE", "deletecollection": "DELETE"}  # fmt: skip
KANIKO = "gcr.io/kaniko-project/executor"
# The node every test starts with, as the fake's: 4 CPUs, labelled pool=cpu.
FIRST_NODE: dict[str, Any] = {
    "name": "node-1",
    "labels": {"pool": "cpu"},
    "cpu": "4",
    "memory": "16Gi",
}
# What a test may leave behind and the next must not see, cluster-wide.
CLUSTER_WIDE = (
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/apis/scheduling.k8s.io/v1/priorityclasses",
    "/api/v1/persistentvolumes",
)
_limited = itertools.count()


@dataclass(frozen=True)
class Kind:
    group: str
    plural: str
    version: str
    namespaced: bool = True

    def path(self, namespace: str = "", name: str = "") -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        where = f"/namespaces/{namespace}" if namespace and self.namespaced else ""
        return f"{base}{where}/{self.plural}" + (f"/{quote(name)}" if name else "")


class RealApi:
    """The fake API server's test-side methods, over the real one (as cluster admin)."""

    def __init__(self, api: Api, audit_log: Path) -> None:
        self.raw = api
        self.audit_log = audit_log
        self.since = audit_log.stat().st_size if audit_log.exists() else 0
        self.marked_at: datetime.datetime | None = None
        self.kinds: dict[tuple[str, str], Kind] = {}
        # (verb, resource) pairs the studio's credentials may not do: RealKube.kubeconfig
        # then gives an identity whose ClusterRole grants all else, as RBAC would.
        self.forbidden: set[tuple[str, str]] = set()
        self.git_version = api.call("GET", "/version")["gitVersion"]

    def mark(self) -> None:
        """Count requests (and their users) made from now on: not the end of a watch
        begun before, which the log records when it ends."""
        self.since = self.audit_log.stat().st_size
        self.marked_at = datetime.datetime.now(datetime.UTC)

    def _events(self) -> Iterator[dict[str, Any]]:
        """Each request clients but this harness made since the mark, once, from the API
        server's audit log (a watch counts once, when it starts)."""
        seen: set[str] = set()
        with open(self.audit_log, encoding="utf-8") as log:
            log.seek(self.since)
            for line in log:
                event = json.loads(line)
                if event["auditID"] in seen or event["user"]["username"] == HARNESS:
                    continue
                received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"])
                if self.marked_at is not None and received < self.marked_at:
                    continue
                seen.add(event["auditID"])
                yield event

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of each request since the mark."""
        return [
            (METHODS.get(e["verb"], e["verb"].upper()), e["requestURI"].split("?")[0])
            for e in self._events()
        ]

    def users(self) -> dict[str, list[str]]:
        """Who made the requests since the mark, and what each asked."""
        made: dict[str, list[str]] = {}
        for e in self._events():
            made.setdefault(e["user"]["username"], []).append(f"{e['verb']} {e['requestURI']}")
        return made

    def kind(self, group: str, plural: str) -> Kind:
        if (group, plural) not in self.kinds:
            if group:
                found = self.raw.call("GET", f"/apis/{group}")
                versions = [found["preferredVersion"]["version"]] + [
                    v["version"] for v in found["versions"]
                ]
            else:
                versions = ["v1"]
            for version in versions:
                base = f"/apis/{group}/{version}" if group else "/api/v1"
                resources = self.raw.call("GET", base)["resources"]
                match = next((r for r in resources if r["name"] == plural), None)
                if match:
                    self.kinds[(group, plural)] = Kind(group, plural, version, match["namespaced"])
                    break
            else:
                raise LookupError(f"no resource {plural} in group {group!r}")
        return self.kinds[(group, plural)]

    def _read(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        # A kind just made answers 429 until its storage is ready: retried, as clients do.
        for _ in range(100):
            try:
                return self.raw.call("GET", path, query=query)
            except ApiError as exc:
                if exc.code != 429:
                    raise
                time.sleep(0.1)
        return self.raw.call("GET", path, query=query)

    def count(self, kind: Kind, namespace: str = "") -> int:
        return len(self.list(kind, namespace)["items"])

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        return self._read(kind.path(namespace, name))

    def list(self, kind: Kind, namespace: str = "", selector: str = "") -> dict[str, Any]:
        query = {"labelSelector": selector} if selector else None
        return self._read(kind.path(namespace), query)

    def create(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.raw.call("POST", kind.path(namespace), body)

    def delete(self, kind: Kind, namespace: str, name: str, grace: int | None = None) -> None:
        body = None if grace is None else {"gracePeriodSeconds": grace}
        self.raw.call("DELETE", kind.path(namespace, name), body)


@functools.cache
def harness(cluster: DevCluster) -> Api:
    """The tests' own identity (cluster admin), apart from the admin kubeconfig the studio
    is given, so that what the studio asks of the API server can be counted alone."""
    assert cluster.control.ca is not None
    pair = cluster.control.ca.issue(HARNESS, HARNESS, ("system:masters",))
    return Api(cluster.control.url, str(cluster.control.ca.path), pair)


def start_session() -> DevCluster:
    here = Path(__file__).resolve().parent
    # Back-offs of a second, not the kubelet's ten: crash loops and pull retries are
    # what the tests watch, and they watch them happen.
    cluster = DevCluster(backoff=1.0)
    kaniko = [sys.executable, str(here / "kaniko.py")]
    cluster.images.entrypoints[KANIKO] = [*kaniko, f"--fake-registry={cluster.registry}"]
    cluster.start(nodes=0)
    options = dict(FIRST_NODE)
    cluster.add_node(options.pop("name"), **options)
    return cluster


class RealKube:
    """One test's view of the session's cluster."""

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.api = RealApi(harness(cluster), cluster.control.audit_log)
        self.url = cluster.control.url
        self.before = self._snapshot()
        self.proxy: FaultProxy | None = None

    def through(self, proxy: FaultProxy) -> None:
        """The studio is given the fault proxy's address from now on (tests.faults)."""
        self.proxy = proxy

    def kubeconfig(self, token: str | None = None) -> dict[str, Any]:
        """The admin's kubeconfig; with `token`, one that authenticates with it; with
        `api.forbidden`, an identity that may do all but that."""
        config = self.cluster.kubeconfig()
        if self.proxy is not None:  # plain HTTP: a token, not the admin's certificate
            config["clusters"][0]["cluster"] = {"server": self.proxy.url}
            if token is None and not self.api.forbidden:
                token = self._limited(set())
        if token is None and self.api.forbidden:
            token = self._limited(self.api.forbidden)
        if token is not None:
            config["users"][0]["user"] = {"token": token}
        return config

    def exists(self, group: str, plural: str, namespace: str, name: str) -> bool:
        try:
            self.api.get(self.api.kind(group, plural), namespace, name)
            return True
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise

    @property
    def secret(self) -> str:
        """What of the admin's kubeconfig must never be shown: its client key."""
        return str(self.cluster.kubeconfig()["users"][0]["user"]["client-key-data"])

    def _limited(self, forbidden: set[tuple[str, str]]) -> str:
        raw = self.api.raw
        rules = []
        groups = [("", "v1")] + [
            (g["name"], g["preferredVersion"]["version"])
            for g in raw.call("GET", "/apis")["groups"]
        ]
        for group, version in groups:
            base = f"/apis/{group}/{version}" if group else "/api/v1"
            for resource in raw.call("GET", base)["resources"]:
                name = resource["name"]
                verbs = [
                    v
                    for v in resource.get("verbs") or []
                    if (v, name.split("/")[0]) not in forbidden
                ]
                if verbs:
                    rules.append({"apiGroups": [group], "resources": [name], "verbs": verbs})
        name = f"limited-{next(_limited)}"
        raw.call(
            "POST", "/api/v1/namespaces/kube-system/serviceaccounts", {"metadata": {"name": name}}
        )
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        raw.call("POST", f"{rbac}/clusterroles", {"metadata": {"name": name}, "rules": rules})
        raw.call(
            "POST",
            f"{rbac}/clusterrolebindings",
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}],
            },
        )
        answer = raw.call(
            "POST",
            f"/api/v1/namespaces/kube-system/serviceaccounts/{name}/token",
            {"spec": {"expirationSeconds": 3600}},
        )
        return str(answer["status"]["token"])

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
        gpus: int = 0,
        **options: Any,
    ) -> None:
        self.cluster.add_node(
            name, labels=labels or {}, cpu=cpu, memory=memory, gpus=gpus, **options
        )

    def evict(self, namespace: str, name: str) -> None:
        assert self.cluster.kubelet is not None
        self.cluster.kubelet.evict(namespace, name)

    def listening_address(self, pod: dict[str, Any]) -> str:
        """Where a pod's processes listen on this host: the 127 address its API podIP
        stands for (see devcluster.network)."""
        return self.cluster.addresses.host(pod["status"]["podIP"])

    def claim_folder(self, namespace: str, claim: str, timeout: float = 30) -> Path:
        """The host folder of a claim's volume, once the claim is bound."""
        path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"
        deadline = time.monotonic() + timeout
        while not (volume := self.api.raw.call("GET", path)["spec"].get("volumeName")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"claim {namespace}/{claim} was not bound in {timeout} s")
            time.sleep(0.1)
        found = self.api.raw.call("GET", f"/api/v1/persistentvolumes/{volume}")
        return Path(found["spec"]["hostPath"]["path"])

    def pushed(self, image: str) -> bool:
        return self.cluster.images.pushed(image)

    # -- between tests ----------------------------------------------------------------------
    def _snapshot(self) -> dict[str, set[str]]:
        found = {
            path: {item["metadata"]["name"] for item in self.api.raw.call("GET", path)["items"]}
            for path in (*CLUSTER_WIDE, "/api/v1/namespaces")
        }
        assert self.cluster.kubelet is not None
        found["nodes"] = set(self.cluster.kubelet.nodes)
        return found

    def reset(self, timeout: float = 60) -> None:
        """Everything the test made goes: its namespaces (their pods at once), nodes and
        cluster-wide objects; returns once the namespaces are gone."""
        raw = self.api.raw
        now = self._snapshot()
        namespaces = now["/api/v1/namespaces"] - self.before["/api/v1/namespaces"]
        for path in (
            "/apis/batch/v1/namespaces/default/jobs",
            "/apis/apps/v1/namespaces/default/deployments",
        ):
            with contextlib.suppress(ApiError):
                raw.call("DELETE", path, query={"propagationPolicy": "Background"})
        for namespace in namespaces:
            with contextlib.suppress(ApiError):
                raw.call("DELETE", f"/api/v1/namespaces/{namespace}")
        # Then their pods at once, not after their grace: a Terminating namespace takes no
        # new pod, so none a controller made meanwhile is left to stop slowly.
        for namespace in [*namespaces, "default"]:
            with contextlib.suppress(ApiError):
                raw.call(
                    "DELETE", f"/api/v1/namespaces/{namespace}/pods", {"gracePeriodSeconds": 0}
                )
        for path in CLUSTER_WIDE:
            for name in now[path] - self.before[path]:
                with contextlib.suppress(ApiError):
                    raw.call("DELETE", f"{path}/{name}")
        assert self.cluster.kubelet is not None
        for name in now["nodes"] - self.before["nodes"]:
            self.cluster.remove_node(name)
        deadline = time.monotonic() + timeout
        while True:
            left = {
                item["metadata"]["name"] for item in raw.call("GET", "/api/v1/namespaces")["items"]
            } & namespaces
            if not left:
                return
            if time.monotonic() > deadline:
                pods = [
                    f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
                    for pod in raw.call("GET", "/api/v1/pods")["items"]
                    if pod["metadata"]["namespace"] in left
                ]
                raise TimeoutError(
                    f"namespaces {sorted(left)} were not deleted in {timeout} s (pods left: {pods})"
                )
            time.sleep(0.1)
