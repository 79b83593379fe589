"""Talking to a registered cluster with the official `kubernetes` client: building its
client from the stored kubeconfig, and saying in words what went wrong."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from studio.documents import DocumentError, load_bounded
from studio.errors import FieldErrors

if TYPE_CHECKING:
    from compute.models import Cluster

log = logging.getLogger(__name__)

# What the studio does in an attachment's namespace, and must be allowed to.
NEEDED = [
    ("create", "batch", "jobs"),
    ("delete", "batch", "jobs"),
    ("watch", "batch", "jobs"),
    ("create", "", "secrets"),
    ("watch", "", "pods"),
    ("get", "", "pods/log"),
]


class ClusterError(Exception):
    """The cluster could not be used; the message says why, for a person."""


def read_kubeconfig(text: str, context: str = "") -> tuple[dict[str, Any], str]:
    """The kubeconfig as a mapping and the context to use, or ClusterError naming the
    problem (the YAML, a missing context)."""
    try:
        loaded = load_bounded(text)
    except DocumentError as exc:
        raise ClusterError(f"kubeconfig: {exc.errors[0][1]}") from None
    if not isinstance(loaded, dict) or not loaded.get("contexts"):
        raise ClusterError("kubeconfig: no contexts in it (is it a kubeconfig file?)")
    names = [c.get("name") for c in loaded["contexts"] if isinstance(c, dict)]
    chosen = context or loaded.get("current-context") or (names[0] if len(names) == 1 else "")
    if chosen not in names:
        raise ClusterError(
            f"context: {chosen!r} is not in the kubeconfig (it has: {', '.join(map(str, names))})"
            if chosen
            else f"context: the kubeconfig has several ({', '.join(map(str, names))}); pick one"
        )
    _refuse_host_access(loaded)
    return loaded, str(chosen)


# Kubeconfig fields that make the studio read a file or run a program on its own host: a
# kubeconfig pasted into the console must not reach the studio's files or run as it.
HOST_FIELDS = {
    "clusters": ("certificate-authority",),
    "users": ("client-certificate", "client-key", "tokenFile", "exec", "auth-provider"),
}


def _refuse_host_access(kubeconfig: dict[str, Any]) -> None:
    for section, fields in HOST_FIELDS.items():
        for i, entry in enumerate(kubeconfig.get(section) or []):
            inner = (entry or {}).get(section[:-1]) if isinstance(entry, dict) else None
            for name in fields:
                if isinstance(inner, dict) and inner.get(name):
                    raise ClusterError(
                        f"kubeconfig: {section}[{i}].{section[:-1]}.{name} would make the "
                        "studio read a file or run a program on its own host; give the "
                        "credentials inline instead (token, client-certificate-data, "
                        "client-key-data, certificate-authority-data), e.g. a ServiceAccount "
                        "token"
                    )


def server_of(kubeconfig: dict[str, Any], context: str) -> str:
    ctx = next(c["context"] for c in kubeconfig["contexts"] if c.get("name") == context)
    for entry in kubeconfig.get("clusters") or []:
        if entry.get("name") == ctx.get("cluster"):
            return str((entry.get("cluster") or {}).get("server", ""))
    return ""


# Every call gives up on a server that stops answering: (connect, read) seconds, the read
# timeout applying to each read rather than to the whole answer. The client's own default
# is to wait forever, and a pool-wide timeout is overridden by the None it passes per call.
# Streams pass their own: a watch outlives the time the server keeps it open, and a
# followed log that stays silent for FOLLOW_TIMEOUT is followed anew from where it was (a
# quiet job may print nothing for an hour; a dead connection is noticed all the same).
REQUEST_TIMEOUT = (10, 30)
WATCH_SECONDS = 60  # how long the server keeps a watch open before it is made anew
WATCH_TIMEOUT = (10, WATCH_SECONDS + 30)
FOLLOW_TIMEOUT = (10, 300)


class _TimedRest(rest.RESTClientObject):
    def request(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("_request_timeout"):
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().request(*args, **kwargs)


def api_client(cluster: Cluster) -> client.ApiClient:
    """A client for the cluster, as its kubeconfig (or the pod's service account) says:
    plain http:// servers included, TLS verified as the kubeconfig says."""
    configuration = client.Configuration()
    if cluster.in_cluster:
        config.load_incluster_config(client_configuration=configuration)
        return _client(configuration)
    return client_from(*read_kubeconfig(cluster.kubeconfig, cluster.context))


def client_from(kubeconfig: dict[str, Any], context: str) -> client.ApiClient:
    """A client for a kubeconfig already read (and checked) by read_kubeconfig."""
    configuration = client.Configuration()
    config.load_kube_config_from_dict(
        kubeconfig, context=context, client_configuration=configuration
    )
    return _client(configuration)


def _client(configuration: client.Configuration) -> client.ApiClient:
    # The controller submits several jobs at once, and watches and log followers hold
    # connections of their own.
    configuration.connection_pool_maxsize = 32
    # Throttling (429, with its Retry-After) and passing server trouble are retried a few
    # times, then reported; a POST retried after a lost answer meets 409, which the
    # backend treats as done (its names are deterministic).
    configuration.retries = urllib3.Retry(
        total=4,
        connect=3,
        read=0,
        status=3,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        backoff_factor=0.2,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    api = client.ApiClient(configuration)
    api.rest_client = _TimedRest(configuration)
    return api


# Frequent callers (the deployment runner and its log reader) share one client per
# cluster: connections are kept between calls, and the kubeconfig is read and decrypted
# once per version of the cluster's record, and again every SHARED_SECONDS (credentials
# that expire, as exec plugins' tokens do, are fetched anew).
SHARED_SECONDS = 300.0
_shared: dict[int, tuple[float, float, client.ApiClient]] = {}
_shared_lock = threading.Lock()


@contextlib.contextmanager
def shared_client(cluster: Cluster) -> Iterator[client.ApiClient]:
    """The cluster's shared client, for one use (it is not closed after: others share
    it; a replaced one goes with its last user)."""
    version, now = cluster.updated_at.timestamp(), time.monotonic()
    with _shared_lock:
        found = _shared.get(cluster.pk)
        if found is None or found[0] != version or now - found[1] > SHARED_SECONDS:
            found = _shared[cluster.pk] = (version, now, api_client(cluster))
    yield found[2]


def in_words(exc: Exception) -> str:
    """What a failed call means for IT-ops; never the credentials."""
    if isinstance(exc, ApiException):
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message", "")
        if exc.status == 401:
            return "unauthorized: the cluster refused these credentials (expired or revoked?)"
        if exc.status == 403:
            return f"forbidden: {message or 'the credentials may not do this'}"
        if exc.status == 404:
            return f"not found: {message}" if message else "not found"
        return f"the API server answered {exc.status} {exc.reason}: {message}".rstrip(": ")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = getattr(exc, "reason", None) or exc
        return f"unreachable: {reason.__class__.__name__}: {str(reason).split(': ', 1)[-1]}"
    if isinstance(exc, config.ConfigException):
        return f"kubeconfig: {exc}"
    return f"{exc.__class__.__name__}: {exc}"


def refused(cluster: Cluster, exc: Exception, said: str = "") -> FieldErrors:
    """What the cluster answered (or why it did not), as a 400 on the `cluster` field."""
    return FieldErrors([("cluster", f"{cluster.name}: {said or in_words(exc)}")])


@dataclass
class ClusterStatus:
    reachable: bool
    message: str = ""
    version: str = ""
    nodes_ready: int | None = None
    allowed: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)


def may(api: client.ApiClient, verb: str, group: str, resource: str, namespace: str) -> bool:
    """Whether these credentials may do this, as the API server's authorizer says."""
    plural, _, sub = resource.partition("/")
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=plural,
                subresource=sub or None,
            )
        )
    )  # fmt: skip
    answer: Any = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(answer.status and answer.status.allowed)


def check(cluster: Cluster, namespace: str = "default") -> ClusterStatus:
    """The server version, whether the credentials work, and what they may do."""
    try:
        api = api_client(cluster)
        version = client.VersionApi(api).get_code().git_version
    except Exception as exc:
        return ClusterStatus(reachable=False, message=in_words(exc))
    status = ClusterStatus(reachable=True, version=version)
    try:
        for verb, group, resource in NEEDED:
            allowed = may(api, verb, group, resource, namespace)
            (status.allowed if allowed else status.denied).append(f"{verb} {resource}")
        nodes: Any = client.CoreV1Api(api).list_node().items
        status.nodes_ready = sum(
            1
            for node in nodes
            if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        )
    except Exception as exc:
        status.message = in_words(exc)
    return status


def list_and_watch(
    lister: Callable[..., Any],
    on_list: Callable[[list[dict[str, Any]]], None],
    on_event: Callable[[str, dict[str, Any]], None],
    stop: threading.Event,
    what: str,
    on_trouble: Callable[[Exception], None] | None = None,
) -> None:
    """Keep a view of some objects, as an informer does, until `stop`: list, then watch
    from the list's resourceVersion; a 410 (too old) lists again; trouble is told to
    `on_trouble`, waits (doubling up to 30 s) and resumes. Raw JSON throughout: the
    client's models cost more than the rest of the work. `lister` is a client list call
    with its own arguments bound."""
    backoff = 0.2
    version = ""
    while not stop.is_set():
        try:
            if not version:
                listed = json.loads(lister(_preload_content=False).data)
                on_list(listed["items"])
                version = listed["metadata"]["resourceVersion"]
            response = lister(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _preload_content=False,
                _request_timeout=WATCH_TIMEOUT,
            )
            for raw in response:  # one JSON event a line
                event = json.loads(raw)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") != 410:
                        raise RuntimeError(obj.get("message", "watch error"))
                    version = ""
                    break
                version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], obj)
                if stop.is_set():
                    return
            backoff = 0.2
        except Exception as exc:  # the connection or the server: wait, go on
            if isinstance(exc, ApiException) and exc.status == 410:
                version = ""
                continue
            if on_trouble is not None:
                on_trouble(exc)
            # Said once per outage, not at every retry (a cluster without the CRD yet, say).
            level = logging.WARNING if backoff == 0.2 else logging.DEBUG
            log.log(level, "watching %s: %s (retrying)", what, in_words(exc))
            stop.wait(backoff)
            backoff = min(30.0, backoff * 2)


class Informer:
    """The objects one list call selects, kept current by `list_and_watch` in a thread of
    its own until `stop` (as client-go's informers keep theirs): read without a request.
    `trouble` is the last failure until the server answers again, so a reader can tell a
    quiet view from one that stopped hearing."""

    def __init__(self, lister: Callable[..., Any], what: str) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = threading.Event()  # listed at least once
        self.stop = threading.Event()
        self.trouble: Exception | None = None
        self._lock = threading.Lock()
        self._lister = lister
        threading.Thread(
            target=list_and_watch,
            args=(self._call, self._listed, self._changed, self.stop, what, self._failed),
            daemon=True,
            name=f"informer: {what}",
        ).start()

    def _call(self, **kwargs: Any) -> Any:
        answer = self._lister(**kwargs)
        self.trouble = None
        return answer

    def _failed(self, exc: Exception) -> None:
        self.trouble = exc

    def _listed(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self.objects = {o["metadata"]["name"]: o for o in items}
        self.synced.set()

    def _changed(self, event: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if event == "DELETED":
                self.objects.pop(obj["metadata"]["name"], None)
            else:
                self.objects[obj["metadata"]["name"]] = obj

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.objects.get(name)

    def select(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The objects that carry all these labels."""
        with self._lock:
            return [
                o for o in self.objects.values()
                if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
            ]  # fmt: skip
