"""The studio's cluster extension: everything a cluster needs, as plain objects, applied
idempotently with server-side apply under the studio's own field manager.

What it holds: the InstanceType CRD (cluster-scoped, as Azure's), a ServiceAccount for the
studio with least-privilege RBAC (a ClusterRole for instance types, nodes and namespaces;
a Role per attached namespace for jobs, pods, their logs, Secrets (made only) and
ConfigMaps) and the attached namespaces. `manifests` prints the same objects for GitOps;
`uninstall` removes what `install` made (objects with the extension's label) and nothing
else. Namespaces are created when missing and otherwise left as they are; uninstall keeps
the attached ones (they may hold the users' work) and removes only its own kstudio-system.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import inference, kube

if TYPE_CHECKING:
    from compute.models import Cluster

GROUP = "kstudio.io"
VERSION = "v1alpha1"
AZURE_GROUP = "amlarc.azureml.com"  # Azure's InstanceType group: its files are accepted
CRD_NAME = f"instancetypes.{GROUP}"
FIELD_MANAGER = "kubestudio"
SYSTEM_NAMESPACE = "kstudio-system"
PART_OF = {"app.kubernetes.io/managed-by": "kubestudio", "app.kubernetes.io/part-of": "kstudio"}

# The extension settings, as Azure's extension names them.
SETTINGS: dict[str, tuple[type, Any]] = {
    "enableTraining": (bool, True),
    "enableInference": (bool, False),
    "inferenceRouterServiceType": (str, "loadBalancer"),
    # Not Azure's: with false, enableInference installs no router in the cluster, and the
    # studio's own router reaches the deployments through the API server's service proxy
    # (a cluster without load balancers, or one whose pods cannot reach the studio).
    "inferenceRouter": (bool, True),
    "inferenceRouterHA": (bool, True),
    "allowInsecureConnections": (bool, False),
    # The router's certificate: a Secret in kstudio-system with cert.pem and key.pem (as
    # Azure's sslSecret), for the name sslCname; without one it makes its own at start.
    "sslSecret": (str, ""),
    "sslCname": (str, ""),
    # Not Azure's: a volume per attached namespace where jobs' conda environments are
    # built once and reused by every pod (ReadWriteMany; the cluster's default storage
    # class unless one is named).
    "environmentCache": (bool, False),
    "environmentCacheStorageClass": (str, ""),
    "environmentCacheSize": (str, "20Gi"),
    # Not Azure's: environments with a Docker build context are built in the cluster by a
    # builder Job (kaniko) and pushed here (`registry.example.com/kstudio`), with the
    # credentials of this Secret (kubernetes.io/dockerconfigjson) in each namespace.
    "imageRegistry": (str, ""),
    "imageRegistrySecret": (str, ""),
    "imageBuilder": (str, "gcr.io/kaniko-project/executor:v1.23.2"),
}
CACHE_CLAIM = "kstudio-environments"
ROUTER_SERVICE_TYPES = ("loadBalancer", "nodePort", "clusterIP")
# A DNS-1123 subdomain: a Secret's name, and the router's host name (sslCname).
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# The Secret holding the studio's own ServiceAccount token (compute.credentials).
TOKEN_SECRET = "kstudio-token"  # noqa: S105 (a name, not a password)


def parse_settings(pairs: list[str], current: dict[str, Any]) -> dict[str, Any]:
    """`key=value` pairs (as `--set` takes them) onto the current settings; a FieldErrors-
    style list of problems is raised as ValueError with (field, message) pairs."""
    settings = {**{k: default for k, (_, default) in SETTINGS.items()}, **current}
    selector = dict(settings.get("nodeSelector") or {})
    problems: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            problems.append((key, "expected key=value"))
        elif key.startswith("nodeSelector."):
            selector[key.removeprefix("nodeSelector.")] = value
        elif key not in SETTINGS:
            problems.append(
                (key, f"unknown setting (known: {', '.join(SETTINGS)}, nodeSelector.*)")
            )
        elif SETTINGS[key][0] is bool:
            if value.lower() not in ("true", "false"):
                problems.append((key, "expected true or false"))
            settings[key] = value.lower() == "true"
        elif key == "inferenceRouterServiceType" and value not in ROUTER_SERVICE_TYPES:
            problems.append((key, f"expected one of {', '.join(ROUTER_SERVICE_TYPES)}"))
        elif key in ("sslSecret", "sslCname") and value and not DNS_NAME.match(value):
            what = "a Secret's name" if key == "sslSecret" else "a host name"
            problems.append((key, f"expected {what}: lowercase letters, digits, '-' and '.'"))
        else:
            settings[key] = value
    if problems:
        raise ValueError(problems)
    settings["nodeSelector"] = selector
    return settings


def _quantity_rule(path: str) -> dict[str, str]:
    return {"rule": f"string(self.{path}) != '0'", "message": f"{path} must not be zero"}


def _resources_schema() -> dict[str, Any]:
    # A structural schema may not give additionalProperties beside properties (the API
    # server refuses the CRD); unknown keys are refused as "unknown field" by the server's
    # strict field validation (kubectl's default) and pruned otherwise.
    quantity = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"},
                                                            {"type": "string"}]}  # fmt: skip
    gpu = {"type": "integer", "minimum": 0, "nullable": True}
    return {
        "type": "object",
        "required": ["requests", "limits"],
        "properties": {
            "requests": {
                "type": "object",
                "required": ["cpu", "memory"],
                "properties": {"cpu": quantity, "memory": quantity},
                "x-kubernetes-validations": [_quantity_rule("cpu"), _quantity_rule("memory")],
            },
            "limits": {
                "type": "object",
                "required": ["cpu", "memory"],
                "properties": {"cpu": quantity, "memory": quantity, "nvidia.com/gpu": gpu},
                "x-kubernetes-validations": [_quantity_rule("cpu"), _quantity_rule("memory")],
            },
        },
    }


def crd(group: str = GROUP) -> dict[str, Any]:
    """The InstanceType CRD, with exactly Azure's fields: nodeSelector, resources."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"instancetypes.{group}", "labels": PART_OF},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {
                "plural": "instancetypes",
                "singular": "instancetype",
                "kind": "InstanceType",
                "listKind": "InstanceTypeList",
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["resources"],
                                    "properties": {
                                        "nodeSelector": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "resources": _resources_schema(),
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def _role_rules(settings: dict[str, Any]) -> list[dict[str, Any]]:
    serving = [
        # Online deployments (enableInference): their Deployments, Services, ConfigMaps
        # (server-side applied: an apply that makes the object needs create as well as
        # patch), and the service proxy a studio outside the cluster uses.
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"],
         "verbs": ["list", "patch"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get", "create"]},
        # A generation's token, when its pods fetch from the studio: applied and deleted
        # by name, never read.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch", "delete"]},
    ] if settings.get("enableInference") else []  # fmt: skip
    return [*serving,
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"],
         "verbs": ["create", "get", "delete"]},
        # Each job's launcher, launch file and token, in a Secret its Job owns (gone with
        # it): made, never read back.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"],
         "verbs": ["create", "get", "patch"]},
    ]  # fmt: skip


def cache_claim(namespace: str, settings: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The namespace's environment cache: one claim its pods share."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": settings.get("environmentCacheSize") or "20Gi"}},
    }
    if settings.get("environmentCacheStorageClass"):
        spec["storageClassName"] = settings["environmentCacheStorageClass"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CACHE_CLAIM, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def manifests(
    cluster: Cluster, namespaces: list[str], settings: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every object the extension applies (with these settings, else the cluster's), in
    the order it applies them."""
    settings = cluster.settings if settings is None else settings
    labels = {**PART_OF, "kstudio.io/cluster": cluster.name}
    subject = {"kind": "ServiceAccount", "name": "kstudio", "namespace": SYSTEM_NAMESPACE}
    objects: list[dict[str, Any]] = [
        crd(),
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": SYSTEM_NAMESPACE, "labels": labels}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "kstudio", "namespace": SYSTEM_NAMESPACE, "labels": labels}},
        # The studio's own long-lived token, filled in by the token controller and kept
        # by the studio in place of the admin's credentials; deleting it revokes it.
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {"name": TOKEN_SECRET, "namespace": SYSTEM_NAMESPACE, "labels": labels,
                      "annotations": {"kubernetes.io/service-account.name": "kstudio"}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "kstudio", "labels": labels},
         "rules": [
             {"apiGroups": [GROUP], "resources": ["instancetypes"],
              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
             {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
             # What runs on each node, for the nodes page and the fit check.
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
             {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create"]},
             {"apiGroups": ["authorization.k8s.io"],
              "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
              "verbs": ["create"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "kstudio", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "kstudio"},
         "subjects": [subject]},
    ]  # fmt: skip
    for namespace in sorted(set(namespaces)):
        objects += [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": namespace, "labels": labels}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "kstudio", "namespace": namespace, "labels": labels},
             "rules": _role_rules(settings or {})},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "kstudio", "namespace": namespace, "labels": labels},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "kstudio"},
             "subjects": [subject]},
        ]  # fmt: skip
        if (settings or {}).get("environmentCache"):
            objects.append(cache_claim(namespace, settings or {}, labels))
    if inference.has_router(settings or {}):
        objects += inference.router(cluster, settings or {}, labels)
        objects += [inference.model_servers_policy(n, labels) for n in sorted(set(namespaces))]
    return objects


PLURALS = {
    "CustomResourceDefinition": "customresourcedefinitions",
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "InstanceType": "instancetypes",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "Secret": "secrets",
    "NetworkPolicy": "networkpolicies",
}


def path_of(obj: dict[str, Any], name: str | None = None) -> str:
    api_version, kind = obj["apiVersion"], obj["kind"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    namespace = obj["metadata"].get("namespace")
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURALS[kind]}"
    return f"{base}/{name}" if name else base


def request(api: client.ApiClient, method: str, path: str, *, body: Any = None,
            query: list[tuple[str, str]] | None = None,
            content_type: str = "application/json") -> Any:  # fmt: skip
    """One call by path, for what the typed client has no method for (apply, custom
    resources); raises ApiException as the typed client does."""
    method, url, headers, serialized, _ = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=serialized)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=response)
    return json.loads(response.data or b"null")


def server_side_apply(api: client.ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of one object as the studio's field manager; the object as the
    server keeps it now."""
    return cast(dict[str, Any], request(
        api, "PATCH", path_of(obj, obj["metadata"]["name"]), body=obj,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    ))  # fmt: skip


def apply(api: client.ApiClient, obj: dict[str, Any]) -> str:
    """Server-side apply of one object; returns created, configured or unchanged."""
    try:
        before = request(api, "GET", path_of(obj, obj["metadata"]["name"]))
    except ApiException as exc:
        if exc.status != 404:
            raise
        before = None
    after = server_side_apply(api, obj)["metadata"]["resourceVersion"]
    if before is None:
        return "created"
    return "unchanged" if after == before["metadata"]["resourceVersion"] else "configured"


def ensure(api: client.ApiClient, obj: dict[str, Any]) -> str:
    """Create when missing; an existing object (a namespace with users' work) is left."""
    try:
        request(api, "POST", path_of(obj), body=obj)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
        return "exists (left as it was)"


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    applied: list[dict[str, str]] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The objects the API server refused, each with its words."""
        return [f"{a['kind']} {a['name']}: {a['outcome']}" for a in self.applied
                if a["outcome"].startswith("failed")]  # fmt: skip


def preflight(api: client.ApiClient, objects: list[dict[str, Any]]) -> list[str]:
    """What would make the install fail or do harm, before anything is applied."""
    problems = []
    nodes: Any = client.CoreV1Api(api).list_node().items
    ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True"
                                     for c in n.status.conditions or [])]  # fmt: skip
    if not ready:
        problems.append("no node is Ready: nothing the studio starts could run")
    auth = client.AuthorizationV1Api(api)
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        group = obj["apiVersion"].rpartition("/")[0]
        attributes = client.V1ResourceAttributes(
            verb="patch", group=group, resource=PLURALS[obj["kind"]],
            namespace=obj["metadata"].get("namespace"), name=obj["metadata"]["name"])  # fmt: skip
        answer: Any = auth.create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
            )
        )
        if not (answer.status and answer.status.allowed):
            problems.append(f"forbidden: these credentials may not apply {obj['kind']} "
                            f"{obj['metadata']['name']}")  # fmt: skip
    try:
        existing = request(api, "GET", path_of(crd(), CRD_NAME))
        if (existing["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != (
            "kubestudio"
        ):
            problems.append(f"a CustomResourceDefinition {CRD_NAME} exists and is not the studio's")
    except ApiException as exc:
        if exc.status != 404:
            raise
    return problems


def install(
    cluster: Cluster,
    namespaces: list[str],
    settings: dict[str, Any] | None = None,
    api: client.ApiClient | None = None,
) -> Outcome:
    api = api or kube.api_client(cluster)
    objects = manifests(cluster, namespaces, settings)
    outcome = Outcome(problems=preflight(api, objects))
    wanted = cluster.settings if settings is None else settings
    if inference.has_router(wanted) and not cluster.studio_url:
        outcome.problems.append(
            "enableInference installs the inference router, which reads its routing from "
            "the studio: give the cluster the studio's address as its pods reach it "
            "(--studio-url)"
        )
    if outcome.problems:
        return outcome
    for obj in objects:
        meta = obj["metadata"]
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        try:
            result = apply(api, obj) if obj["kind"] != "Namespace" else ensure(api, obj)
        except ApiException as exc:
            result = f"failed: {kube.in_words(exc)}"
        outcome.applied.append({"kind": obj["kind"], "name": where + meta["name"],
                                "outcome": result})  # fmt: skip
    return outcome


def uninstall(
    cluster: Cluster, namespaces: list[str], api: client.ApiClient | None = None
) -> list[dict[str, str]]:
    """Delete what install made, newest first; an object not labelled as the studio's
    (say, a namespace that existed before) is left alone."""
    api = api or kube.api_client(cluster)
    removed = []
    for obj in reversed(manifests(cluster, namespaces)):
        meta = obj["metadata"]
        try:
            found = request(api, "GET", path_of(obj, meta["name"]))
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        labels = found["metadata"].get("labels") or {}
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        attached = obj["kind"] == "Namespace" and meta["name"] != SYSTEM_NAMESPACE
        if attached or labels.get("app.kubernetes.io/managed-by") != "kubestudio":
            removed.append({"kind": obj["kind"], "name": where + meta["name"], "outcome": "kept"})
            continue
        request(api, "DELETE", path_of(obj, meta["name"]))
        removed.append({"kind": obj["kind"], "name": where + meta["name"], "outcome": "deleted"})
    return removed
