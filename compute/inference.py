"""The extension's part for online endpoints (enableInference): the inference router
inside the cluster, what the studio knows it by, and the NetworkPolicy that lets only the
router reach the model servers of an attached namespace. compute.extension applies these
objects with the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import extension, kube
from studio.tokens import SignedToken

if TYPE_CHECKING:
    from compute.models import Cluster

ROUTER = "kstudio-router"  # the inference router's Deployment, Service and Secret
ROUTER_TOKENS = SignedToken("krt_", salt="kstudio.router-token")
# What an online deployment's pods carry (endpoints.kube sets it), so the policy finds them.
DEPLOYMENT_LABEL = "kstudio.io/online-deployment"
MODEL_SERVERS_POLICY = "kstudio-model-servers"


def router_token(cluster: Cluster) -> str:
    """What the router inside a cluster shows the studio (endpoints.api.router): the
    cluster's id signed with the studio's key, so nothing is stored. It reads the routing
    of that cluster's endpoints and reports their traffic, nothing else."""
    return ROUTER_TOKENS.make(str(cluster.pk))


def cluster_of_router(token: str) -> Cluster | None:
    from compute.models import Cluster

    pk = ROUTER_TOKENS.read(token)
    return Cluster.objects.filter(pk=int(pk)).first() if pk and pk.isdigit() else None


def has_router(settings: dict[str, Any]) -> bool:
    """Whether the extension runs a router inside the cluster (enableInference)."""
    return bool(settings.get("enableInference")) and settings.get("inferenceRouter", True)


def router(
    cluster: Cluster, settings: dict[str, Any], labels: dict[str, str]
) -> list[dict[str, Any]]:
    """The inference router inside the cluster (enableInference): the studio's image
    running `runrouter --studio`, which reads routing tables from the studio with the
    cluster's token and sends requests to the deployments' Services; three replicas spread
    over nodes with inferenceRouterHA; HTTPS unless allowInsecureConnections."""
    tls = not settings.get("allowInsecureConnections")
    port = 8443 if tls else 8080
    name = settings.get("sslCname") or f"{ROUTER}.{extension.SYSTEM_NAMESPACE}.svc"
    # On the pod's address, as the model servers listen (the probes and Services use it).
    command = ["python", "-m", "django", "runrouter", "--host", "$(POD_IP)", "--port", str(port),
               "--studio", cluster.studio_url]  # fmt: skip
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if tls and settings.get("sslSecret"):
        volumes.append({"name": "tls", "secret": {"secretName": settings["sslSecret"]}})
        mounts.append({"name": "tls", "mountPath": "/etc/kstudio-router", "readOnly": True})
        command += ["--certfile", "/etc/kstudio-router/cert.pem",
                    "--keyfile", "/etc/kstudio-router/key.pem"]  # fmt: skip
    elif tls:
        command += ["--self-signed", name]
    selector = {"app.kubernetes.io/name": ROUTER}
    pod_labels = {**labels, **selector}
    replicas = 3 if settings.get("inferenceRouterHA", True) else 1
    scheme = "HTTPS" if tls else "HTTP"
    container: dict[str, Any] = {
        "name": "router",
        "image": django_settings.STUDIO_ROUTER_IMAGE,
        "command": command,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "DJANGO_SETTINGS_MODULE", "value": "studio.settings"},
            {"name": "KSTUDIO_ROUTER_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": ROUTER, "key": "token"}}},
        ],
        "ports": [{"name": "router", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/api/v1/endpoint-router/healthy", "port": "router",
                                       "scheme": scheme},
                           "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"memory": "1Gi"}},
        "volumeMounts": mounts,
    }  # fmt: skip
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,  # it needs no Kubernetes API
        "nodeSelector": dict(settings.get("nodeSelector") or {}),
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
             "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}
        ],
    }  # fmt: skip
    service_type = {"loadBalancer": "LoadBalancer", "nodePort": "NodePort",
                    "clusterIP": "ClusterIP"}[settings.get("inferenceRouterServiceType")
                                              or "loadBalancer"]  # fmt: skip
    meta = {"name": ROUTER, "namespace": extension.SYSTEM_NAMESPACE, "labels": labels}
    # The studio reads the router's Service for the scoring URI it shows (router_address).
    reader = {
        "name": "kstudio-router-reader",
        "namespace": extension.SYSTEM_NAMESPACE,
        "labels": labels,
    }
    subject = {"kind": "ServiceAccount", "name": "kstudio", "namespace": extension.SYSTEM_NAMESPACE}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": reader,
         "rules": [{"apiGroups": [""], "resources": ["services"], "resourceNames": [ROUTER],
                    "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": reader,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": reader["name"]},
         "subjects": [subject]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
         "stringData": {"token": router_token(cluster)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                  "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"type": service_type, "selector": selector,
                  "ports": [{"name": "https" if tls else "http", "port": 443 if tls else 80,
                             "targetPort": "router"}]}},
    ]  # fmt: skip


def router_address(cluster: Cluster) -> str:
    """Where clients reach the router inside the cluster, as its Service says now ("" until
    it has an address): a load balancer's host name or IP; a node's external (else
    internal) address and the node port; for clusterIP, the Service's name in the cluster
    (the name the self-signed certificate is made for)."""
    settings = cluster.settings or {}
    scheme = "http" if settings.get("allowInsecureConnections") else "https"
    with kube.shared_client(cluster) as api:
        core = client.CoreV1Api(api)
        try:
            service = api.sanitize_for_serialization(
                core.read_namespaced_service(ROUTER, extension.SYSTEM_NAMESPACE)
            )
        except ApiException as exc:
            if exc.status == 404:  # not installed yet, or being replaced
                return ""
            raise
        kind = service["spec"].get("type")
        if kind == "LoadBalancer":
            ingress = (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
            hosts = [i.get("hostname") or i.get("ip") for i in ingress]
            return f"{scheme}://{_host(hosts[0])}" if hosts and hosts[0] else ""
        if kind == "NodePort":
            port = service["spec"]["ports"][0].get("nodePort")
            nodes = api.sanitize_for_serialization(core.list_node())["items"]
            for wanted in ("ExternalIP", "InternalIP"):
                for node in nodes:
                    for address in (node.get("status") or {}).get("addresses") or []:
                        if address.get("type") == wanted and port:
                            return f"{scheme}://{_host(address['address'])}:{port}"
            return ""
    return f"{scheme}://{ROUTER}.{extension.SYSTEM_NAMESPACE}.svc"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address  # an IPv6 address, in a URL


def model_servers_policy(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """Only the router's pods may open a connection to the namespace's model servers: a
    job's pod, of this workspace or another sharing the cluster, cannot score them
    directly. A network plugin that enforces policies holds it (most do; kubenet and
    flannel alone do not), and the per-deployment key the router sends holds everywhere.
    Not installed without the router (inferenceRouter=false): the studio then scores
    through the API server's service proxy, whose address no policy can name."""
    router_pods = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": extension.SYSTEM_NAMESPACE}
        },
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": ROUTER}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": MODEL_SERVERS_POLICY, "namespace": namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": DEPLOYMENT_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [router_pods]}],
        },
    }
