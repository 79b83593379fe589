"""Online deployments on Kubernetes compute: each one a ConfigMap per generation (the
model server, the scoring code and the model's files), a Deployment and a Service in the
attachment's namespace, applied with server-side apply; its state read back from the
Deployment's status and its pods, failures named with Azure's codes.

The pods: an init container, `storage-initializer`, unpacks the code and the model (and
builds the conda file's environment with the launcher's builder, when there is one) into
the pod's `/var/azureml-app`; the container, `inference-server`, runs the model server on
the pod's address, probed as the deployment's probes say. A new generation changes the
pod template, so Kubernetes rolls it (one new pod ready before an old one goes: no
request is lost). The router reaches the Service through the API server's service proxy
(a studio outside the cluster), with the cluster's own credentials.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import ssl
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.core.files.storage import storages
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import extension, kube
from compute.backends.kubernetes import CACHE, MANAGED, STUDIO, object_name
from compute.extension import CACHE_CLAIM
from compute.inference import DEPLOYMENT_LABEL
from compute.models import ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE
from endpoints import initializer, server, tokens
from endpoints.models import Deployment
from endpoints.spec import instances_wanted
from jobs.launch import label_value
from registry import services as registry
from studio.errors import FieldErrors

DRAIN_SECONDS = 5  # how long a deleted pod keeps serving (see its preStop hook)
GENERATION_LABEL = "kstudio.io/generation"
APP = "/var/azureml-app"  # where Azure's inference images keep the app and the models
MOUNT = "/kstudio"  # the ConfigMap: server.py, the archives
PORT = 5001  # the model server's, as Azure's inference server listens
SERVICE_PORT = 80
# Together, the code and the model travel in the ConfigMap, whose limit is 1 MiB (a third
# more once base64-encoded). Larger models need a download step not built yet.
EMBED_LIMIT = 700 * 1024
IMAGE_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def names(deployment: Deployment) -> str:
    """The objects' name: unique across workspaces sharing a namespace."""
    endpoint = deployment.endpoint
    key = f"{endpoint.workspace_id}/{endpoint.name}/{deployment.name}"
    return object_name(key, f"{endpoint.name}-{deployment.name}")


def labels_of(deployment: Deployment) -> dict[str, str]:
    endpoint = deployment.endpoint
    return {
        MANAGED: STUDIO,
        DEPLOYMENT_LABEL: names(deployment),
        "kstudio.io/workspace": label_value(endpoint.workspace.name),
        "kstudio.io/endpoint": label_value(endpoint.name),
        "kstudio.io/deployment": label_value(deployment.name),
    }


def _archive(files: list[tuple[str, Any]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, opener in files:
            with opener() as source:
                data = source.read()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def model_layout(deployment: Deployment) -> dict[str, Any]:
    """Where the model's files go in a pod, as Azure lays them out under
    AZUREML_MODEL_DIR: models/<name>/<version>/<folder>, the files beneath the folder, or
    the one file as it; with the files' listing."""
    model = deployment.model
    assert model is not None
    folder = PurePosixPath(registry.location_of(model).path.rstrip("/")).name
    files = registry.files(model)
    return {
        "dir": f"{model.name}/{model.version}",
        "folder": folder,
        "single": len(files) == 1 and files[0]["path"] == folder,
        "files": [f["path"] for f in files],
    }


def model_archive(deployment: Deployment) -> tuple[bytes, str]:
    """The model's files in that layout as an archive, and the AZUREML_MODEL_DIR."""
    model = deployment.model
    assert model is not None
    layout = model_layout(deployment)
    base = f"{layout['dir']}/{layout['folder']}"
    entries = [
        (base if layout["single"] else f"{base}/{path}",
         lambda p=path: registry.open_file(model, p))
        for path in layout["files"]
    ]  # fmt: skip
    return _archive(entries), f"{APP}/models/{layout['dir']}"


def studio_url(target: ComputeTarget) -> str:
    """How the cluster's pods reach the studio (the cluster's --studio-url)."""
    cluster = target.cluster
    return (cluster.studio_url if cluster else "") or settings.STUDIO_PUBLIC_URL


def too_large(model_size: int, code_size: int, target: ComputeTarget) -> str | None:
    """Why a deployment cannot reach its pods, or None: past what a ConfigMap carries, the
    pods fetch it from the studio, which they must then be able to reach."""
    total = model_size + code_size
    if total <= EMBED_LIMIT or studio_url(target):
        return None
    return (
        f"the model and code ({total // 1024} KiB) are more than a ConfigMap carries "
        f"({EMBED_LIMIT // 1024} KiB), and the pods have no way to fetch them: IT-ops, "
        "give the cluster the studio's address (kstudio cluster create --studio-url) or "
        "set STUDIO_PUBLIC_URL"
    )


def _probe(settings_: dict[str, Any]) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/", "port": "http"},
        "periodSeconds": settings_.get("period", 10),
        "initialDelaySeconds": settings_.get("initial_delay", 10),
        "timeoutSeconds": settings_.get("timeout", 2),
        "successThreshold": settings_.get("success_threshold", 1),
        "failureThreshold": settings_.get("failure_threshold", 30),
    }


def instance_type_of(deployment: Deployment, target: ComputeTarget) -> InstanceType | None:
    """The instance type the deployment names, else defaultinstancetype, in the target's set."""
    wanted = deployment.document.get("instance_type") or DEFAULT_INSTANCE_TYPE
    return target.instance_types().filter(name=wanted).first()


def resources_of(deployment: Deployment, target: ComputeTarget) -> dict[str, Any]:
    """A pod's (or a local instance's) requests and limits: the deployment's own
    resources when it gives them, else its instance type's."""
    return _resources(deployment, instance_type_of(deployment, target))


def _resources(deployment: Deployment, instance_type: InstanceType | None) -> dict[str, Any]:
    own = deployment.document.get("resources")
    source = own if own else (instance_type.resources if instance_type else {})
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = {k: str(v) for k, v in (source.get(part) or {}).items() if v not in (None, "")}
        if part == "requests" and "nvidia.com/gpu" in values:
            values.pop("nvidia.com/gpu")  # a GPU is a limit (Kubernetes sets the request)
        if values:
            out[part] = values
    return out


def render(
    deployment: Deployment, target: ComputeTarget, replicas: int | None = None
) -> list[dict[str, Any]]:
    """The generation's ConfigMap, the Deployment, the Service and the generation's Secret
    (its model servers' key, and its token when its pods fetch from the studio), as plain
    objects (validated in the tests)."""
    cluster = target.cluster
    assert cluster is not None
    namespace = target.namespace or "default"
    name = names(deployment)
    labels = labels_of(deployment)
    document = deployment.document
    generation = str(deployment.generation)
    environment = deployment.environment_used or {}
    cluster_settings = cluster.settings or {}
    files: dict[str, bytes] = {}
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "value": APP},
        {"name": "KSTUDIO_DIR", "value": MOUNT},
        {"name": "AML_APP_ROOT", "value": f"{APP}/code"},
        {"name": "WORKER_COUNT", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    data = {
        "server.py": Path(server.__file__).read_text(),
        "initializer.py": Path(initializer.__file__).read_text(),
    }
    model = deployment.model
    code_size = storages["artifacts"].size(deployment.code) if deployment.code else 0
    embedded = code_size + (model.size if model else 0) <= EMBED_LIMIT
    if deployment.code:
        if embedded:
            with storages["artifacts"].open(deployment.code, "rb") as f:
                files["code.tar.gz"] = f.read()
        script = document["code_configuration"]["scoring_script"]
        env.append({"name": "AZUREML_ENTRY_SCRIPT", "value": script.removeprefix("./")})
    if model is not None:
        model_dir = f"{APP}/models/{model.name}/{model.version}"
        if embedded:
            files["model.tar.gz"], model_dir = model_archive(deployment)
        env.append({"name": "AZUREML_MODEL_DIR", "value": model_dir})
    if not embedded:
        # Fetched from the studio by the initializer, with this generation's own token:
        # in a Secret of the generation's (below), not in the ConfigMap.
        data["fetch.json"] = json.dumps(
            {
                "url": studio_url(target),
                "code": bool(deployment.code),
                "model": (
                    {k: v for k, v in model_layout(deployment).items() if k != "files"}
                    if model
                    else None
                ),
            }
        )
    env += [
        {"name": k, "value": str(v)} for k, v in document.get("environment_variables", {}).items()
    ]
    # Last, so that no variable of the user's replaces it: the key its router shows.
    env.append({"name": tokens.SERVER_KEY_VARIABLE, "valueFrom": {"secretKeyRef": {
        "name": f"{name}-{generation}", "key": "server-key"}}})  # fmt: skip
    init_env: list[dict[str, Any]] = [
        {"name": "APP", "value": APP},
        {"name": "KSTUDIO_DIR", "value": MOUNT},
    ]
    # Named as the generation's ConfigMap, and deleted with it (`remove`).
    secrets = {"server-key": tokens.server_key(deployment.pk)}
    if not embedded:
        secrets["token"] = tokens.deployment_token(deployment)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{name}-{generation}",
            "namespace": namespace,
            "labels": {**labels, GENERATION_LABEL: generation},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in secrets.items()},
    }
    if not embedded:
        init_env.append({"name": "KSTUDIO_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": f"{name}-{generation}", "key": "token"}}})  # fmt: skip
    volumes: list[dict[str, Any]] = [
        {"name": "kstudio", "configMap": {"name": f"{name}-{generation}"}},
        {"name": "app", "emptyDir": {}},
    ]
    init_mounts: list[dict[str, Any]] = [
        {"name": "kstudio", "mountPath": MOUNT, "readOnly": True},
        {"name": "app", "mountPath": APP},
    ]
    if environment.get("key") and not (
        environment.get("curated") and not settings.STUDIO_LOCAL_CURATED
    ):
        data["launcher.py"] = Path(extension.__file__).with_name("launcher.py").read_text()
        cache = f"{APP}/environments"
        if cluster_settings.get("environmentCache"):
            cache = CACHE  # built once in the namespace's volume, for every pod
            volumes.append(
                {"name": "environments", "persistentVolumeClaim": {"claimName": CACHE_CLAIM}}
            )
            init_mounts.append({"name": "environments", "mountPath": CACHE})
        data["environment.json"] = json.dumps(
            {
                "root": f"{APP}/build",
                "name": name,
                "environment": environment,
            }
        )
        init_env += [
            {"name": "KSTUDIO_ROOT", "value": f"{APP}/build"},
            {"name": "KSTUDIO_ENVIRONMENTS", "value": cache},
        ]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-{generation}",
            "namespace": namespace,
            "labels": {**labels, GENERATION_LABEL: generation},
        },
        "data": data,
        "binaryData": {k: base64.b64encode(v).decode() for k, v in files.items()},
    }
    instance_type = instance_type_of(deployment, target)
    image = environment.get("image") or settings.STUDIO_KUBERNETES_IMAGE
    container = {
        "name": "inference-server",
        "image": image,
        # The initializer wrote which interpreter: the built environment's, or the image's.
        "command": [
            "sh",
            "-c",
            f'exec "$(cat "$APP/python")" "$KSTUDIO_DIR/server.py" --host "$POD_IP" --port {PORT}',
        ],
        "env": env,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": _probe(document.get("readiness_probe") or {}),
        "livenessProbe": _probe(document.get("liveness_probe") or {}),
        "resources": _resources(deployment, instance_type),
        "volumeMounts": [
            {"name": "kstudio", "mountPath": MOUNT, "readOnly": True},
            {"name": "app", "mountPath": APP},
            *[m for m in init_mounts if m["name"] == "environments"],
        ],
        # The model server's last words (KSTUDIO_ERROR <code>: ...) when it fails to start.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # A deleted pod leaves the Service's endpoints a moment after it is marked, not at
        # once: it keeps taking requests until every proxy has heard, and only then is
        # sent SIGTERM (on which the server finishes what it has and stops).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}},
    }
    init_container = {
        "name": "storage-initializer",
        "image": image,
        "command": ["python3", "$(KSTUDIO_DIR)/initializer.py"],
        "env": init_env,
        "volumeMounts": init_mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "initContainers": [init_container],
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
        **(
            {"imagePullSecrets": [{"name": target.image_pull_secret}]}
            if target.image_pull_secret
            else {}
        ),
    }
    selector = {
        **((instance_type.node_selector if instance_type else None) or {}),
        **(cluster_settings.get("nodeSelector") or {}),
    }
    if selector:
        pod_spec["nodeSelector"] = selector
    timeout = int((document.get("request_settings") or {}).get("request_timeout_ms", 5000))
    pod_spec["terminationGracePeriodSeconds"] = max(30, DRAIN_SECONDS + timeout // 1000 + 5)
    workload = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas or instances_wanted(document),
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}},
            # One new pod ready before an old one goes: no request is refused meanwhile.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": {**labels, GENERATION_LABEL: generation}},
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": {DEPLOYMENT_LABEL: name},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}],
        },
    }
    return [config_map, workload, service, secret]


# -- in the cluster ----------------------------------------------------------------------------
class StillLeaving(Exception):
    """The last Kubernetes Deployment of this name is still being deleted (foreground: its
    pods drain first). Applied onto, it would go all the same: the new one waits for it."""


def apply(deployment: Deployment, target: ComputeTarget, replicas: int | None = None) -> int:
    """Create, roll or scale the deployment's objects (server-side apply: idempotent).
    Returns the Deployment's generation as the server numbers it: a view of it from
    before (see `observe`) has a lower one."""
    assert target.cluster is not None
    leaving = StillLeaving(
        f"waiting for the last deployment named {deployment.name!r} to be removed from the "
        "cluster (its pods finish their requests first)"
    )
    workloads, _pods = _informers(target)
    seen = workloads.get(names(deployment)) if workloads.synced.is_set() else None
    if seen is not None and seen["metadata"].get("deletionTimestamp"):
        raise leaving  # as the watch saw it: no request made
    generation = 0
    with kube.shared_client(target.cluster) as api:
        for obj in render(deployment, target, replicas):
            kept = extension.server_side_apply(api, obj)
            if obj["kind"] == "Deployment":
                if kept["metadata"].get("deletionTimestamp"):
                    raise leaving  # the watch had not heard yet: applied again once gone
                generation = int(kept["metadata"].get("generation") or 0)
    return generation


# Per cluster (as its record is now) and namespace: the studio's Deployments and pods
# there, kept by watches, so that reading a deployment back (every polling_interval when
# it autoscales) costs the API server nothing.
_watched: dict[tuple[int, float, str], tuple[kube.Informer, kube.Informer]] = {}
_watched_lock = threading.Lock()


def _informers(target: ComputeTarget) -> tuple[kube.Informer, kube.Informer]:
    cluster = target.cluster
    assert cluster is not None
    namespace = target.namespace or "default"
    key = (cluster.pk, cluster.updated_at.timestamp(), namespace)
    with _watched_lock:
        found = _watched.get(key)
        if found is None:
            for old in [k for k in _watched if k[0] == cluster.pk and k[2] == namespace]:
                for informer in _watched.pop(old):  # the cluster's record changed
                    informer.stop.set()
            with kube.shared_client(cluster) as api:
                apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
                selector = f"{MANAGED}={STUDIO},{DEPLOYMENT_LABEL}"
                found = _watched[key] = (
                    kube.Informer(
                        functools.partial(
                            apps.list_namespaced_deployment, namespace, label_selector=selector
                        ),
                        f"online deployments in {namespace} of {cluster.name}",
                    ),
                    kube.Informer(
                        functools.partial(
                            core.list_namespaced_pod, namespace, label_selector=selector
                        ),
                        f"online deployments' pods in {namespace} of {cluster.name}",
                    ),
                )
    return found


def stop_watching() -> None:
    with _watched_lock:
        for informers in _watched.values():
            for informer in informers:
                informer.stop.set()
        _watched.clear()


@dataclass
class Seen:
    """What the cluster says of a deployment now."""

    ready: int  # pods of the newest generation that answer
    done: bool  # the rollout is over: every wanted pod new and ready, no old one left
    code: str = ""  # Azure's error code, when it cannot start
    reason: str = ""
    # Where a router inside the cluster reaches it: its Service's cluster IP (read once
    # the rollout is done).
    in_cluster: str = ""


def _pod_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """Azure's code and the reason in words, for a pod that cannot serve."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return "PodUnschedulable", condition.get("message", "no node fits the pod")
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for each in statuses:
        state = each.get("state") or {}
        waiting = state.get("waiting") or {}
        last = (each.get("lastState") or {}).get("terminated") or {}
        terminated = state.get("terminated") or last
        if waiting.get("reason") in IMAGE_FAILURES:
            return "ImagePullLoopBackOff", waiting.get("message") or "the image cannot be pulled"
        if terminated.get("reason") == "OOMKilled":
            return "PodOutOfMemory", (
                f"{each['name']} ran out of memory (its limit); use a larger instance type "
                "or resources.limits.memory"
            )
        failed = terminated and terminated.get("exitCode") not in (0, None)
        if waiting.get("reason") == "CrashLoopBackOff" or (
            failed and status.get("phase") == "Failed"
        ):
            message = terminated.get("message") or ""
            said = re.search(r"KSTUDIO_ERROR (\w+): (.*)", message)
            if said:  # the model server named the scoring script's failure
                return said[1], message.strip()[-4000:]
            return "DeploymentCrashLoopBackOff", (
                f"{each['name']} exited with code {terminated.get('exitCode')}: "
                f"{message.strip()[-2000:] or 'see its log'}"
            )
    return None


def observe(
    deployment: Deployment, target: ComputeTarget, in_cluster: str = "", applied: int = 0
) -> Seen:
    """The Deployment's rollout and its pods, as the watches see them (and its Service
    once the rollout is done, unless its address is given: it lasts as long as the
    Service). Read from the API server instead while the watches have not listed yet,
    or have a Deployment older than the `applied` generation (the news is on its way)."""
    assert target.cluster is not None
    namespace = target.namespace or "default"
    name = names(deployment)
    workloads, _pods = _informers(target)
    trouble = workloads.trouble
    # A namespace deleted takes the extension's Role with it: the watch is then refused,
    # and the read below tells a namespace gone from a cluster away.
    if trouble is not None and not (isinstance(trouble, ApiException) and trouble.status == 403):
        raise trouble  # the cluster is away: said as a read would
    workload = workloads.get(name) if workloads.synced.is_set() and not trouble else None
    if workload is None or int(workload["metadata"].get("generation") or 0) < applied:
        workload = _read_workload(target, name)
        if workload is None:
            return Seen(0, False, "NamespaceNotFound", f"namespace {namespace!r} does not exist")
    pods = pods_of(deployment, target)
    generation = str(deployment.generation)
    wanted = int(workload["spec"].get("replicas") or 0)
    new = [p for p in pods if p["metadata"]["labels"].get(GENERATION_LABEL) == generation]
    ready = sum(1 for p in new if _is_ready(p))
    old = [p for p in pods if p not in new and not _gone(p)]
    status = workload.get("status") or {}
    observed = status.get("observedGeneration", 0) >= workload["metadata"].get("generation", 0)
    done = observed and ready >= wanted and not old
    for pod in new:
        problem = _pod_problem(pod)
        if problem and not _is_ready(pod):
            return Seen(ready, False, *problem)
    if not done or in_cluster:
        return Seen(ready, done, in_cluster=in_cluster)
    with kube.shared_client(target.cluster) as api:
        service = client.CoreV1Api(api).read_namespaced_service(name, namespace)
    address = service.spec.cluster_ip if service.spec else None
    reach = f"http://{address}:{SERVICE_PORT}" if address and address != "None" else ""
    return Seen(ready, done, in_cluster=reach)


def pods_of(deployment: Deployment, target: ComputeTarget) -> list[dict[str, Any]]:
    """The deployment's pods (all generations), as the watch sees them, or as the API
    server lists them until it has listed once."""
    assert target.cluster is not None
    name = names(deployment)
    _workloads, pods_seen = _informers(target)
    if pods_seen.trouble is not None:
        raise pods_seen.trouble
    if pods_seen.synced.is_set():
        return pods_seen.select({DEPLOYMENT_LABEL: name})
    with kube.shared_client(target.cluster) as api:
        listed = client.CoreV1Api(api).list_namespaced_pod(
            target.namespace or "default", label_selector=f"{DEPLOYMENT_LABEL}={name}"
        )
        return list(api.sanitize_for_serialization(listed)["items"])


def _read_workload(target: ComputeTarget, name: str) -> dict[str, Any] | None:
    """The Deployment from the API server (None: its namespace is gone)."""
    assert target.cluster is not None
    namespace = target.namespace or "default"
    with kube.shared_client(target.cluster) as api:
        try:
            return dict(api.sanitize_for_serialization(
                client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
            ))  # fmt: skip
        except ApiException as exc:
            if exc.status in (403, 404) and _namespace_gone(client.CoreV1Api(api), namespace):
                return None
            raise


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _gone(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or bool(
        pod["metadata"].get("deletionTimestamp")
    )


def _namespace_gone(core: client.CoreV1Api, namespace: str) -> bool:
    """Deleted, or on its way out (its objects, Role included, go first)."""
    try:
        found = core.read_namespace(namespace)
    except ApiException as exc:
        return exc.status == 404
    return found.metadata is not None and found.metadata.deletion_timestamp is not None


def remove(
    deployment: Deployment, target: ComputeTarget, keep_generation: int | None = None
) -> None:
    """The deployment's objects (or only its ConfigMaps of older generations)."""
    assert target.cluster is not None
    namespace = target.namespace or "default"
    name = names(deployment)
    with kube.shared_client(target.cluster) as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        maps = core.list_namespaced_config_map(
            namespace, label_selector=f"{DEPLOYMENT_LABEL}={name}"
        ).items
        for config in maps:
            meta = api.sanitize_for_serialization(config)["metadata"]
            generation = (meta.get("labels") or {}).get(GENERATION_LABEL)
            if keep_generation is not None and generation == str(keep_generation):
                continue
            _quietly(core.delete_namespaced_config_map, meta["name"], namespace)
            # and the generation's token, if it had one: by name (the studio never lists
            # nor reads Secrets)
            _quietly(core.delete_namespaced_secret, meta["name"], namespace)
        if keep_generation is None:
            _quietly(apps.delete_namespaced_deployment, name, namespace,
                     propagation_policy="Foreground")  # fmt: skip
            _quietly(core.delete_namespaced_service, name, namespace)


def _quietly(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:  # gone already is what was wanted
            raise


def log_tail(
    deployment: Deployment, target: ComputeTarget, container: str, lines: int, index: int
) -> str:
    """The last lines of a container's log in the newest generation's pod `index`."""
    assert target.cluster is not None
    namespace = target.namespace or "default"
    selector = f"{DEPLOYMENT_LABEL}={names(deployment)},{GENERATION_LABEL}={deployment.generation}"
    with kube.shared_client(target.cluster) as api:
        core = client.CoreV1Api(api)
        listed = core.list_namespaced_pod(namespace, label_selector=selector).items
        pods = sorted(str(p.metadata.name) for p in listed if p.metadata)
        if not pods:
            return ""
        if not 0 <= index < len(pods):
            raise FieldErrors([("instance", f"the deployment has {len(pods)} instance(s)")])
        try:
            return str(
                core.read_namespaced_pod_log(
                    pods[index], namespace, container=container, tail_lines=lines
                )
            )
        except ApiException as exc:
            if exc.status == 400:  # the container has not started yet: no log
                return ""
            raise


# -- reaching it -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """What a request to the cluster's API server needs: its credentials' headers, and
    its TLS settings (False: plain http)."""

    headers: tuple[tuple[str, str], ...]
    ssl: ssl.SSLContext | bool


_access: dict[tuple[int, float], Access] = {}


def proxy_url(deployment: Deployment, target: ComputeTarget) -> str:
    """The deployment's Service through the API server's service proxy: how the router
    reaches it from outside the cluster."""
    assert target.cluster is not None
    namespace = target.namespace or "default"
    host = access_host(target)
    return (
        f"{host.rstrip('/')}/api/v1/namespaces/{namespace}/services/"
        f"http:{names(deployment)}:{SERVICE_PORT}/proxy"
    )


def access_host(target: ComputeTarget) -> str:
    assert target.cluster is not None
    with kube.shared_client(target.cluster) as api:
        return str(api.configuration.host)


def access(target: ComputeTarget) -> Access:
    """The cluster's credentials as the router sends them (kept per version of the
    cluster's record: read and decrypted once, not per request)."""
    cluster = target.cluster
    assert cluster is not None
    key = (cluster.pk, cluster.updated_at.timestamp())
    found = _access.get(key)
    if found is not None:
        return found
    with kube.shared_client(cluster) as api:
        config = api.configuration
        token = (config.api_key or {}).get("authorization") or (config.api_key or {}).get(
            "BearerToken"
        )
        headers: tuple[tuple[str, str], ...] = ()
        if token:
            headers = (("Authorization", token if " " in token else f"Bearer {token}"),)
        tls: ssl.SSLContext | bool = False
        if config.host.startswith("https"):
            tls = ssl.create_default_context(cafile=config.ssl_ca_cert or None)
            if not config.verify_ssl:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
            if config.cert_file:
                tls.load_cert_chain(config.cert_file, config.key_file)
        found = _access[key] = Access(headers, tls)
        return found
