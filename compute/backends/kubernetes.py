"""Kubernetes compute: each job a `batch/v1` Job in its attachment's namespace, run by the
same launcher as local jobs (shipped in a Secret), followed through watches and pod
logs, never by asking the API server about each job on each tick.

Per backend (one attachment: a cluster and a namespace): two watch threads (Jobs, Pods,
by the studio's label) keep a cache and say which jobs have news through a pipe, the
controller's `events_fd`; one log follower per pod streams its container log. The API
server sees two writes per job to start it (the Job, then its Secret owned by it) and
one when it is over (a TTL, so the cluster cleans up after the studio has read all).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import capacity, kube, launcher
from compute.backends import artifacts
from compute.backends.base import ComputeBackend, LaunchSpec, LogRecord, Observation
from compute.backends.remote import launch_file
from compute.extension import CACHE_CLAIM
from compute.podlogs import ContainerLog, parse_stamp

log = logging.getLogger(__name__)

MANAGED = "app.kubernetes.io/managed-by"
STUDIO = "kubestudio"
JOB_LABEL = "kstudio.io/job"
MOUNT = "/kstudio"  # the job's Secret: launcher.py and launch.json (with the job's token)
ROOT = "/job"  # the job's folder (an emptyDir): code, inputs, outputs
CACHE = "/kstudio-environments"  # the namespace's environment cache, when the cluster has one
DATA = "/kstudio-data"  # host-folder datastores' storage, mounted where IT-ops named it
NODES_FRESH = 30.0  # seconds a view of the nodes serves the fit check at submit
DONE_TTL = 600  # seconds a finished Job stays for `kubectl` after the studio read it all
# Uploads up to this size, together, travel in the job's Secret (whose limit is 1 MiB).
EMBED_LIMIT = 512 * 1024
DISTRIBUTION_PORTS = {
    "pytorch": 29500,
    "tensorflow": 2222,
    "mpi": 2223,  # each instance's launcher, taking mpirun's launch (launcher.MPI_RUN)
}
IMAGE_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def object_name(job_key: str, name: str) -> str:
    """A DNS-1123 label (63 characters) unique across workspaces sharing a namespace, the
    same for the same job (a retried submit finds the Job it made)."""
    digest = hashlib.sha256(job_key.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-") or "job"
    return f"ks-{slug}-{digest}"


def render(
    spec: LaunchSpec,
    name: str,
    namespace: str,
    studio_url: str,
    image: str,
    extension_selector: dict[str, str],
    shm_size: str = "2g",
    image_pull_secret: str = "",
    environment_cache: bool = False,
) -> list[dict[str, Any]]:
    """The Job and its Secret, as plain objects (validated in the tests). The pods go
    where the instance type's selector and the extension's (AND-ed) both allow."""
    labels = {MANAGED: STUDIO, JOB_LABEL: name, **spec.labels}
    carried = _small_uploads(spec)
    launch = launch_file(spec, ROOT, studio_url, {key: f"upload-{key}" for key in carried})
    instances = max(1, spec.instance_count)
    per_instance = int((spec.distribution or {}).get("process_count_per_instance") or 1)
    distributed = instances > 1 or (spec.distribution is not None and per_instance > 1)
    if distributed:
        # Each pod is <job>-<index>.<service>, found through the headless Service below.
        kind = (spec.distribution or {}).get("type", "")
        launch["distribution"] = {
            "type": kind,
            "hosts": [f"{name}-{index}.{name}" for index in range(instances)],
            "port": DISTRIBUTION_PORTS.get(kind, 29500),
            "process_count_per_instance": per_instance,
        }
    # What the pod runs, in a Secret rather than a ConfigMap: the launch file holds the
    # job's token (the artifact API's and MLflow's), and who may read a namespace's
    # ConfigMaps need not read its Secrets.
    files = {"launcher.py": launcher_source().encode(), "launch.json": json.dumps(launch).encode()}
    files.update({f"upload-{key}": data for key, data in carried.items()})
    bundle = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": {key: base64.b64encode(data).decode() for key, data in files.items()},
    }
    resources: dict[str, Any] = {}
    if spec.requests:
        resources["requests"] = {k: str(v) for k, v in spec.requests.items()}
    if spec.limits:
        resources["limits"] = {k: str(v) for k, v in spec.limits.items()}
    container: dict[str, Any] = {
        "name": "job",
        "image": image,
        "command": ["python3", "$(KSTUDIO_DIR)/launcher.py", "$(KSTUDIO_DIR)/launch.json"],
        "env": [
            {"name": "KSTUDIO_DIR", "value": MOUNT},
            {"name": "KSTUDIO_ROOT", "value": ROOT},
            {"name": "KSTUDIO_TERMINATION_LOG", "value": "/dev/termination-log"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": resources,
        "volumeMounts": [
            {"name": "kstudio", "mountPath": MOUNT, "readOnly": True},
            {"name": "work", "mountPath": ROOT},
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - the pod's own
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        **({"imagePullSecrets": [{"name": image_pull_secret}]} if image_pull_secret else {}),
        "volumes": [
            {"name": "kstudio", "secret": {"secretName": name}},
            {"name": "work", "emptyDir": {}},
            {
                "name": "dshm",
                "emptyDir": {
                    "medium": "Memory",
                    "sizeLimit": shm_quantity(shm_size),
                },
            },
        ],
        "enableServiceLinks": False,
    }
    if environment_cache and (spec.environment or {}).get("key"):
        # Built once in the namespace's volume, reused by every later pod.
        container["env"].append({"name": "KSTUDIO_ENVIRONMENTS", "value": CACHE})
        pod_spec["volumes"].append(
            {"name": "environments", "persistentVolumeClaim": {"claimName": CACHE_CLAIM}}
        )
        container["volumeMounts"].append({"name": "environments", "mountPath": CACHE})
    mounted = [(n, i["volume"]["volume"]) for n, i in spec.inputs.items() if i.get("volume")]
    if mounted:
        container["env"].append({"name": "KSTUDIO_DATA", "value": DATA})
    for index, (input_name, source) in enumerate(mounted):
        kind, fields = next(iter(source.items()))  # persistentVolumeClaim or nfs
        pod_spec["volumes"].append({"name": f"data-{index}", kind: {**fields, "readOnly": True}})
        container["volumeMounts"].append(
            {"name": f"data-{index}", "mountPath": f"{DATA}/{input_name}", "readOnly": True}
        )
    node_selector = {**spec.node_selector, **extension_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        # A pod lost to node disruption (drain, eviction, preemption) is replaced instead
        # of failing the job; the command's own failure fails it.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.timeout:
        # The launcher stops the command at limits.timeout; this is the backstop.
        job_spec["activeDeadlineSeconds"] = int(spec.timeout) + int(spec.grace_seconds) + 60
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": job_spec,
    }
    if not distributed:
        return [job, bundle]
    # Distributed: one pod per instance, each knowing its index, all started together.
    job_spec.update(completionMode="Indexed", completions=instances, parallelism=instances)
    pod_spec["subdomain"] = name
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",  # headless: a DNS name per pod
            "selector": {JOB_LABEL: name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "distribution", "port": launch["distribution"]["port"]}],
        },
    }
    return [job, bundle, service]


# The builder pod's first step: the environment's Docker context, from the studio.
FETCH_CONTEXT = """\
import os, tarfile, urllib.request
request = urllib.request.Request(
    os.environ["KSTUDIO_CONTEXT_URL"],
    headers={"Authorization": "Bearer " + os.environ["KSTUDIO_TOKEN"]},
)
with urllib.request.urlopen(request, timeout=120) as response:
    with tarfile.open(fileobj=response, mode="r|*") as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(os.environ["KSTUDIO_CONTEXT"], **safe)
"""


def _job_state(job: dict[str, Any]) -> str:
    """Complete, Failed, or Running (not ended) from a Job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return "Running"


def builder_name(build: dict[str, Any]) -> str:
    return f"ks-build-{build['hash'][:16]}"


def built_image(registry: str, build: dict[str, Any]) -> str:
    """Where an environment's image is pushed: one tag per context (its hash)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", str(build["label"]).split(":")[0].lower()).strip("-.")
    return f"{registry.rstrip('/')}/{slug or 'environment'}:{build['hash'][:16]}"


def render_builder(
    build: dict[str, Any],
    image: str,
    namespace: str,
    studio_url: str,
    token: str,
    settings_: dict[str, Any],
    fetch_image: str,
) -> dict[str, Any]:
    """The Job that builds an environment's image from its Docker context with kaniko
    and pushes it: shared by every job of that context in the namespace (its name is the
    context's hash), kept as the record that the image exists."""
    name = builder_name(build)
    labels = {MANAGED: STUDIO, JOB_LABEL: name, "kstudio.io/build": build["hash"][:16]}
    context = {"name": "context", "mountPath": "/workspace"}
    build_container: dict[str, Any] = {
        "name": "build",
        "image": settings_.get("imageBuilder") or "gcr.io/kaniko-project/executor:v1.23.2",
        "env": [{"name": "KSTUDIO_CONTEXT", "value": "/workspace"}],
        "args": [
            "--context=dir://$(KSTUDIO_CONTEXT)",
            f"--dockerfile=$(KSTUDIO_CONTEXT)/{build['dockerfile_path']}",
            f"--destination={image}",
        ],
        "volumeMounts": [context],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    volumes: list[dict[str, Any]] = [{"name": "context", "emptyDir": {}}]
    if settings_.get("imageRegistrySecret"):
        volumes.append({"name": "registry", "secret": {
            "secretName": settings_["imageRegistrySecret"],
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})  # fmt: skip
        build_container["volumeMounts"].append(
            {"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True}
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "initContainers": [
            {
                "name": "context",
                "image": fetch_image,
                "command": ["python3", "-c", FETCH_CONTEXT],
                "env": [
                    {
                        "name": "KSTUDIO_CONTEXT_URL",
                        "value": studio_url.rstrip("/") + "/api/v1/job-io/build-context",
                    },
                    {"name": "KSTUDIO_TOKEN", "value": token},
                    {"name": "KSTUDIO_CONTEXT", "value": "/workspace"},
                ],
                "volumeMounts": [context],
            }
        ],
        "containers": [build_container],
        "volumes": volumes,
    }
    if settings_.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(settings_["nodeSelector"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


@functools.cache
def launcher_source() -> str:
    """The launcher as shipped to pods (read once: it is the same for every job)."""
    return Path(launcher.__file__).read_text(encoding="utf-8")


def _small_uploads(spec: LaunchSpec) -> dict[str, bytes]:
    """The job's uploads, read from the artifact store, when together they fit in its
    Secret: then a job needs no way from its pod to the studio to get them."""
    refs = [r for r in [spec.code, *spec.inputs.values()] if r and "artifact" in r]
    try:
        if sum(artifacts.store().size(r["artifact"]) for r in refs) > EMBED_LIMIT:
            return {}
        carried = {}
        for ref in refs:
            with artifacts.store().open(ref["artifact"], "rb") as f:
                carried[ref["key"]] = f.read()
        return carried
    except OSError:  # not in the store (a preview of a job not yet submitted)
        return {}


def shm_quantity(size: str) -> str:
    """Azure's `shm_size` (docker's "2g", "512m") as a Kubernetes quantity ("2Gi")."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.strip().lower())
    if match is None:
        return size
    return match[1] + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[match[2]]


class KubernetesBackend(ComputeBackend):
    kind = "kubernetes"

    @classmethod
    def from_target(cls, target: Any) -> KubernetesBackend:
        cluster = target.cluster
        if cluster is None:
            raise LookupError(f"Compute target {target.name!r} has no cluster attached.")
        extension = cluster.settings or {}
        return cls(
            kube.api_client(cluster),
            namespace=target.namespace or "default",
            studio_url=cluster.studio_url or settings.STUDIO_PUBLIC_URL,
            node_selector=dict(extension.get("nodeSelector") or {}),
            image_pull_secret=target.image_pull_secret,
            environment_cache=bool(extension.get("environmentCache")),
            extension=extension,
        )

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        studio_url: str,
        node_selector: dict[str, str] | None = None,
        image_pull_secret: str = "",
        environment_cache: bool = False,
        extension: dict[str, Any] | None = None,
    ) -> None:
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.studio_url = studio_url
        self.node_selector = node_selector or {}
        self.image_pull_secret = image_pull_secret
        self.environment_cache = environment_cache
        self.extension = extension or {}  # the cluster's settings (its image registry...)
        self.jobs: dict[str, dict[str, Any]] = {}  # by name, from the watch
        self.pods: dict[str, dict[str, Any]] = {}
        # The same pods by the job they belong to: observing a job does not scan them all.
        self.pods_of_job: dict[str, dict[str, dict[str, Any]]] = {}
        self.synced = {"jobs": threading.Event(), "pods": threading.Event()}
        self.followers: dict[str, ContainerLog] = {}
        self.canceled: set[str] = set()
        self.done_marked: set[str] = set()
        self.news: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.watching = False
        self.nodes_seen: tuple[float, list[capacity.Node]] | None = None

    # -- starting ------------------------------------------------------------------------------
    def enforcement_notes(self, requests: dict[str, Any], limits: dict[str, Any]) -> list[str]:
        return []  # the kubelet enforces requests and limits, GPUs included

    def placement_warnings(self, instance_type: Any) -> list[str]:
        """From a view of the nodes at most NODES_FRESH seconds old: a submission burst
        asks the cluster once, not once a job."""
        now = time.monotonic()
        if self.nodes_seen is None or now - self.nodes_seen[0] > NODES_FRESH:
            try:
                self.nodes_seen = (now, capacity.nodes_from(self.api))
            except Exception:  # the cluster cannot say now: no warning, no refusal
                return []
        said = capacity.warning(instance_type, self.nodes_seen[1])
        return [f"On this cluster now, {said}"] if said else []

    def render(self, spec: LaunchSpec) -> list[dict[str, Any]]:
        """The job's objects; with an image to build, the Job waits (suspended) and the
        builder Job comes last."""
        image = spec.image or settings.STUDIO_KUBERNETES_IMAGE
        if spec.build:
            image = built_image(self.extension.get("imageRegistry", ""), spec.build)
        name = object_name(spec.job_key, spec.name)
        objects = render(
            spec, name, self.namespace, self.studio_url, image, self.node_selector,
            spec.shm_size, self.image_pull_secret, self.environment_cache,
        )  # fmt: skip
        if spec.build:
            objects[0]["spec"]["suspend"] = True  # until its image is built
            objects.append(
                render_builder(
                    spec.build,
                    image,
                    self.namespace,
                    self.studio_url,
                    spec.job_token,
                    {**self.extension, "nodeSelector": self.node_selector},
                    settings.STUDIO_KUBERNETES_IMAGE,
                )
            )
        return objects

    def _ensure_builder(self, builder: dict[str, Any]) -> str:
        """Start the image's builder unless it ran: returns whether it has succeeded. A
        failed one is started anew (a new job is a new try)."""
        name = builder["metadata"]["name"]
        try:
            found: Any = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise RuntimeError(kube.in_words(exc)) from exc
            found = None
        if found is not None:
            state = _job_state(self.api.sanitize_for_serialization(found))
            if state != "Failed":
                return state
            self.batch.delete_namespaced_job(
                name, self.namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
            )
        try:
            self.batch.create_namespaced_job(self.namespace, cast(Any, builder))
        except ApiException as exc:
            if exc.status != 409:
                raise RuntimeError(kube.in_words(exc)) from exc
        return "Running"

    def submit(self, spec: LaunchSpec) -> dict[str, Any]:
        job, *owned = self.render(spec)  # the Job, then what it owns (Secret, Service)
        builder = owned.pop() if spec.build else None
        if builder is not None and self._ensure_builder(builder) == "Complete":
            job["spec"]["suspend"] = False  # built before: no wait
        name = job["metadata"]["name"]
        try:
            made: Any = self.batch.create_namespaced_job(self.namespace, cast(Any, job))
        except ApiException as exc:
            if exc.status == 404:
                raise RuntimeError(
                    f"namespace {self.namespace!r} no longer exists in the cluster: IT-ops can "
                    "re-create it (cluster install does) or detach this compute target"
                ) from exc
            if exc.status != 409:  # 409: made by an earlier try, which got no answer
                raise RuntimeError(kube.in_words(exc)) from exc
            made = self.batch.read_namespaced_job(name, self.namespace)
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": made.metadata.uid,
                 "controller": True, "blockOwnerDeletion": False}  # fmt: skip
        for obj in owned:
            obj["metadata"]["ownerReferences"] = [owner]
            create = (self.core.create_namespaced_secret if obj["kind"] == "Secret"
                      else self.core.create_namespaced_service)  # fmt: skip
            try:
                create(self.namespace, cast(Any, obj))
            except ApiException as exc:
                if exc.status != 409:
                    raise RuntimeError(kube.in_words(exc)) from exc
        return {
            "namespace": self.namespace,
            "name": name,
            "uid": made.metadata.uid,
            "job_id": spec.job_id,
            "outputs": ["default", *spec.outputs],
            "instances": max(1, spec.instance_count),
            **(
                {
                    "builder": builder["metadata"]["name"],
                    "image": job["spec"]["template"]["spec"]["containers"][0]["image"],
                }
                if builder
                else {}
            ),
        }

    # -- watching --------------------------------------------------------------------------------
    def _start_watching(self) -> None:
        with self.lock:
            if self.watching:
                return
            self.watching = True
        for kind in ("jobs", "pods"):
            threading.Thread(
                target=self._watch,
                args=(kind,),
                daemon=True,
                name=f"k8s-watch-{kind}-{self.namespace}",
            ).start()

    def _watch(self, kind: str) -> None:
        """The cache of one kind (Jobs or Pods) of the studio's, with news told."""
        lister: Any = (
            self.batch.list_namespaced_job if kind == "jobs" else self.core.list_namespaced_pod
        )
        cache = self.jobs if kind == "jobs" else self.pods

        def listed(items: list[dict[str, Any]]) -> None:
            fresh = {o["metadata"]["name"]: o for o in items}
            with self.lock:
                gone = {self._job_of(kind, o) for n, o in cache.items() if n not in fresh}
                cache.clear()
                cache.update(fresh)
                if kind == "pods":
                    self.pods_of_job.clear()
                    for pod_name, pod in fresh.items():
                        self.pods_of_job.setdefault(self._job_of(kind, pod), {})[pod_name] = pod
            self.synced[kind].set()
            self._tell({self._job_of(kind, o) for o in fresh.values()} | gone)

        def changed(event: str, obj: dict[str, Any]) -> None:
            name, job = obj["metadata"]["name"], self._job_of(kind, obj)
            with self.lock:
                if event == "DELETED":
                    cache.pop(name, None)
                    if kind == "pods":
                        self.pods_of_job.get(job, {}).pop(name, None)
                else:
                    cache[name] = obj
                    if kind == "pods":
                        self.pods_of_job.setdefault(job, {})[name] = obj
            self._tell({job})

        selected = functools.partial(lister, self.namespace, label_selector=f"{MANAGED}={STUDIO}")
        kube.list_and_watch(selected, listed, changed, self.stop, f"{kind} in {self.namespace}")

    @staticmethod
    def _job_of(kind: str, obj: dict[str, Any]) -> str:
        labels = obj["metadata"].get("labels") or {}
        return str(labels.get(JOB_LABEL) or obj["metadata"]["name"])

    def _tell(self, names: set[str]) -> None:
        names.discard("")
        if not names:
            return
        with self.lock:
            self.news |= names
        with contextlib.suppress(BlockingIOError):
            os.write(self.write_fd, b"!")

    def events_fd(self) -> int | None:
        self._start_watching()
        return self.read_fd

    def watch(self, runtime: dict[str, Any]) -> str | None:
        self._start_watching()
        return str(runtime["name"])

    def unwatch(self, runtime: dict[str, Any]) -> None:
        name = str(runtime.get("name"))
        with self.lock:
            for pod, follower in list(self.followers.items()):
                if pod.startswith(name + "-"):
                    del self.followers[pod]
                    follower.stop()

    def changed(self) -> set[str]:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 4096)
        with self.lock:
            news, self.news = self.news, set()
        return news

    # -- logs --------------------------------------------------------------------------------
    def _pod_ended(self, name: str) -> bool:
        with self.lock:
            pod = self.pods.get(name)
        return pod is None or self._terminated(pod) is not None

    # -- observing ---------------------------------------------------------------------------------
    @staticmethod
    def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if "terminated" in (status.get("state") or {}):
                return dict(status["state"]["terminated"])
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return {"exitCode": None, "reason": pod["status"].get("reason", "")}
        return None

    def observe(self, runtime: dict[str, Any], cursor: dict[str, Any]) -> Observation:
        self._start_watching()
        name = str(runtime["name"])
        if not all(e.wait(10) for e in self.synced.values()):
            return Observation(lines=[], cursor=cursor)  # not listed yet: nothing known
        with self.lock:
            pods = sorted(
                self.pods_of_job.get(name, {}).values(),
                key=lambda p: p["metadata"].get("creationTimestamp") or "",
            )
        distributed = int(runtime.get("instances", 1)) > 1
        lines, cursor, logs_complete = self._read_logs(pods, cursor, distributed=distributed)
        observed = self._observe(runtime, cursor, lines, logs_complete, pods)
        if distributed:
            observed.instances = self._instances({self._index(p): p for p in pods})
        return observed

    def _observe(
        self,
        runtime: dict[str, Any],
        cursor: dict[str, Any],
        lines: list[LogRecord],
        logs_complete: bool,
        pods: list[dict[str, Any]],
    ) -> Observation:
        name = str(runtime["name"])
        with self.lock:
            job = self.jobs.get(name)
        if job is None:
            if name in self.canceled:
                return Observation(lines, cursor, phase="Canceled", reason="Canceled by request.")
            gone = "The Kubernetes Job was deleted outside the studio."
            return Observation(lines, cursor, phase="Failed", reason=gone)
        if (job.get("spec") or {}).get("suspend") and runtime.get("builder"):
            return self._await_image(runtime, lines, cursor)
        pod = pods[-1] if pods else None  # the newest: the one whose end says why
        conditions = {
            c["type"]: c
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        }
        ended = "Complete" in conditions or "Failed" in conditions
        if ended and not logs_complete:
            return Observation(lines, cursor, phase="Finalizing")
        if "Complete" in conditions:
            self._mark_done(name)
            return Observation(
                lines, cursor, phase="Completed", exit_code=0, outputs=self._outputs(runtime)
            )
        if "Failed" in conditions:
            self._mark_done(name)
            code, reason = self._why_failed(conditions["Failed"], pod, runtime)
            return Observation(
                lines,
                cursor,
                phase="Failed",
                exit_code=code,
                reason=reason,
                outputs=self._outputs(runtime),
            )
        # The newest pod of each instance (one, unless the job is distributed).
        current = {self._index(p): p for p in pods}
        instances = int(runtime.get("instances", 1))
        if len(current) < instances:
            waiting = "Waiting for the cluster to create the pods."
            return Observation(lines, cursor, phase="Queued", waiting_reason=waiting)
        running = 0
        for each in current.values():
            status = each.get("status") or {}
            for condition in status.get("conditions") or []:
                if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                    waiting = f"Not scheduled: {condition.get('message')}"
                    return Observation(lines, cursor, phase="Queued", waiting_reason=waiting)
            for container in status.get("containerStatuses") or []:
                stuck = (container.get("state") or {}).get("waiting") or {}
                if stuck.get("reason") in IMAGE_FAILURES:
                    image = each["spec"]["containers"][0].get("image")
                    self.cancel(runtime, force=True)
                    self.canceled.discard(name)
                    why = f"The image {image} could not be pulled ({stuck['reason']})"
                    detail = stuck.get("message")
                    reason = f"{why}: {detail}" if detail else why + "."
                    return Observation(lines, cursor, phase="Failed", reason=reason)
            running += status.get("phase") in ("Running", "Succeeded")
        # A distributed job runs once all its instances do (none is reported alone).
        if running == instances:
            return Observation(lines, cursor, phase="Running")
        return Observation(lines, cursor, phase="Preparing")

    def _instances(self, current: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """Each instance's pod as a person would read it: its phase, node and trouble."""
        described = []
        for index, pod in sorted(current.items()):
            status = pod.get("status") or {}
            reason = ""
            for condition in status.get("conditions") or []:
                if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                    reason = str(condition.get("message", ""))
            ended = self._terminated(pod)
            if ended is not None and ended.get("exitCode"):
                reason = f"exited with code {ended['exitCode']}"
            described.append({"index": index, "phase": status.get("phase", "Pending"),
                              "node": (pod.get("spec") or {}).get("nodeName", ""),
                              "reason": reason})  # fmt: skip
        return described

    @staticmethod
    def _index(pod: dict[str, Any]) -> int:
        labels = pod["metadata"].get("labels") or {}
        return int(labels.get("batch.kubernetes.io/job-completion-index", 0))

    def _read_logs(
        self, pods: list[dict[str, Any]], cursor: dict[str, Any], *, distributed: bool = False
    ) -> tuple[list[LogRecord], dict[str, Any], bool]:
        """New lines of the job's pods, oldest pod first; whether every log is complete.
        A distributed job's lines say which instance wrote them: "[2] ..."."""
        records: list[LogRecord] = []
        cursor = dict(cursor)
        complete = True
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            if (
                self._terminated(pod) is None
                and (pod.get("status") or {}).get("phase") != "Running"
            ):
                continue  # not started: no log yet (and none at all if it never starts)
            with self.lock:
                follower = self.followers.get(pod_name)
                if follower is None:
                    mark = (cursor.get("pods") or {}).get(pod_name) or {}
                    job = self._job_of("pods", pod)
                    follower = self.followers[pod_name] = ContainerLog(
                        lambda: self.core, self.namespace, pod_name, "job",
                        mark.get("after", ""), int(mark.get("seen", 0)),
                        ended=functools.partial(self._pod_ended, pod_name),
                        heard=functools.partial(self._tell, {job}), stop=self.stop,
                    ).start()  # fmt: skip
            taken = follower.take()
            mark = (cursor.setdefault("pods", {})).setdefault(pod_name, {"after": "", "seen": 0})
            for stamp_text, line in taken:
                if stamp_text == mark["after"]:
                    mark["seen"] += 1
                else:
                    mark["after"], mark["seen"] = stamp_text, 1
                seconds, nanos = parse_stamp(stamp_text)
                if distributed:
                    line = f"[{self._index(pod)}] {line}"
                records.append(LogRecord(ts=seconds + nanos / 1e9, stream="stdout", line=line))
            complete = complete and follower.done
        records.sort(key=lambda record: record.ts)  # instances' lines in the order written
        return records, cursor, complete

    def _why_failed(
        self, condition: dict[str, Any], pod: dict[str, Any] | None, runtime: dict[str, Any]
    ) -> tuple[int | None, str]:
        if condition.get("reason") == "DeadlineExceeded":
            return None, "The job exceeded limits.timeout and Kubernetes stopped it."
        terminated = self._terminated(pod) if pod else None
        if not terminated:
            return None, f"The Kubernetes Job failed: {condition.get('message', '')}".rstrip(": ")
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return code, "The job ran out of memory (OOMKilled): raise its instance type's memory."
        if (pod or {}).get("status", {}).get("reason") == "Evicted":
            return code, f"The pod was evicted: {pod['status'].get('message', '')}"  # type: ignore[index]
        with contextlib.suppress(ValueError, TypeError):
            ending = json.loads(terminated.get("message") or "")
            if ending.get("reason"):
                return ending.get("exit_code", code), str(ending["reason"])
        # The launcher never ran (it leaves how it ended in the termination message).
        if terminated.get("reason") in ("StartError", "ContainerCannotRun") or code in (126, 127):
            image = ((pod or {}).get("spec") or {}).get("containers", [{}])[0].get("image")
            return code, (
                f"The image {image} could not run the studio's launcher: it needs python3 "
                f"(3.8 or newer) on its PATH. {terminated.get('message', '')}".rstrip()
            )
        return code, f"The command exited with code {code}."

    def _outputs(self, runtime: dict[str, Any]) -> list[dict[str, Any]]:
        return artifacts.published_outputs(int(runtime["job_id"]), list(runtime["outputs"]))

    def _mark_done(self, name: str) -> None:
        """The studio has read everything: the cluster may remove the Job in a while."""
        if name in self.done_marked:
            return
        self.done_marked.add(name)
        with contextlib.suppress(ApiException):
            self.batch.patch_namespaced_job(
                name, self.namespace, {"spec": {"ttlSecondsAfterFinished": DONE_TTL}}
            )

    # -- stopping --------------------------------------------------------------------------
    def _await_image(
        self, runtime: dict[str, Any], lines: list[LogRecord], cursor: dict[str, Any]
    ) -> Observation:
        """A job waiting for its environment's image: started once the builder succeeds,
        failed with the builder's own words if it fails."""
        builder_name_ = str(runtime["builder"])
        with self.lock:
            builder = self.jobs.get(builder_name_)
            pods = list(self.pods_of_job.get(builder_name_, {}).values())
        state = _job_state(builder) if builder is not None else "Running"
        if state == "Complete":
            self.batch.patch_namespaced_job(
                runtime["name"], self.namespace, {"spec": {"suspend": False}}
            )
            return Observation(lines, cursor, phase="Queued", waiting_reason="Image built.")
        if state == "Failed":
            self.cancel(runtime, force=True)
            self.canceled.discard(str(runtime["name"]))
            said = ""
            for pod in pods:
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    ended = (status.get("state") or {}).get("terminated") or {}
                    said = ended.get("message") or said
            reason = f"Building the image {runtime.get('image')} failed (job {builder_name_})"
            return Observation(
                lines, cursor, phase="Failed", reason=f"{reason}: {said.strip()[-2000:]}"
                if said else reason + ".",
            )  # fmt: skip
        waiting = f"Building its environment's image {runtime.get('image')} (job {builder_name_})."
        return Observation(lines, cursor, phase="Queued", waiting_reason=waiting)

    def cancel(self, runtime: dict[str, Any], *, force: bool = False) -> None:
        name = str(runtime["name"])
        self.canceled.add(name)
        body = client.V1DeleteOptions(
            propagation_policy="Foreground", grace_period_seconds=0 if force else None
        )
        try:
            self.batch.delete_namespaced_job(name, self.namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def close(self) -> None:
        """Stop watching and following (the target changed: a new backend takes over)."""
        self.stop.set()
        with self.lock:
            for follower in self.followers.values():
                follower.stop()
