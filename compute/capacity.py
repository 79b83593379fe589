"""What a cluster's nodes offer and hold, and which instance types fit where: the nodes
page, and the fit check made when an instance type is saved and when a job is submitted
(a warning, never a refusal: a cluster autoscaler may add the node it needs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes import client

from compute import kube
from compute.resources import quantity

if TYPE_CHECKING:
    from compute.models import Cluster, InstanceType

GPU = "nvidia.com/gpu"
SHOWN = ("cpu", "memory", GPU)


@dataclass
class Node:
    name: str
    ready: bool
    labels: dict[str, str]
    taints: list[str]
    allocatable: dict[str, Decimal]
    requested: dict[str, Decimal] = field(default_factory=dict)

    @property
    def free(self) -> dict[str, Decimal]:
        return {k: v - self.requested.get(k, Decimal(0)) for k, v in self.allocatable.items()}


def _amount(value: Any) -> Decimal:
    try:
        return quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        return Decimal(0)


def nodes(cluster: Cluster) -> list[Node]:
    return nodes_from(kube.api_client(cluster))


def nodes_from(api: client.ApiClient) -> list[Node]:
    """Every node with what the pods placed on it request now (two API calls)."""
    core = client.CoreV1Api(api)
    raw_nodes: Any = core.list_node(_preload_content=False)
    raw_pods: Any = core.list_pod_for_all_namespaces(_preload_content=False)
    found = {}
    for item in json.loads(raw_nodes.data)["items"]:
        status = item.get("status") or {}
        found[item["metadata"]["name"]] = Node(
            name=item["metadata"]["name"],
            ready=any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in status.get("conditions") or []),
            labels=item["metadata"].get("labels") or {},
            taints=[f"{t['key']}={t.get('value', '')}:{t['effect']}"
                    for t in (item.get("spec") or {}).get("taints") or []],
            allocatable={k: _amount(v) for k, v in (status.get("allocatable") or {}).items()
                         if k in SHOWN},
        )  # fmt: skip
    for pod in json.loads(raw_pods.data)["items"]:
        node = found.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for container in pod["spec"].get("containers") or []:
            resources = container.get("resources") or {}
            wanted = dict(resources.get("requests") or {})
            if GPU in (resources.get("limits") or {}):
                wanted[GPU] = resources["limits"][GPU]
            for name, value in wanted.items():
                if name in SHOWN:
                    node.requested[name] = node.requested.get(name, Decimal(0)) + _amount(value)
    return sorted(found.values(), key=lambda n: n.name)


def needs(instance_type: InstanceType) -> dict[str, Decimal]:
    """What one pod of this size takes from a node: its requests, and its GPUs."""
    wanted = {k: _amount(v) for k, v in instance_type.requests.items() if k in SHOWN}
    gpus = instance_type.limits.get(GPU)
    if gpus:
        wanted[GPU] = _amount(gpus)
    return {k: v for k, v in wanted.items() if v > 0}


def how_many(node: Node, wanted: dict[str, Decimal]) -> int:
    """How many more pods of this size the node could take now."""
    if not wanted:
        return 0
    free = node.free
    return max(0, min(math.floor(free.get(k, Decimal(0)) / v) for k, v in wanted.items()))


def matches(node: Node, instance_type: InstanceType) -> bool:
    selector = instance_type.node_selector.items()
    return node.ready and all(node.labels.get(k) == v for k, v in selector)


def fit(instance_type: InstanceType, all_nodes: list[Node]) -> dict[str, Any]:
    """Where the instance type fits: {node: how many more}, and a warning when nowhere."""
    wanted = needs(instance_type)
    placed = {n.name: how_many(n, wanted) for n in all_nodes if matches(n, instance_type)}
    fits = {k: v for k, v in placed.items() if v > 0}
    return {"fits": fits, "warning": warning(instance_type, all_nodes)}


def warning(instance_type: InstanceType, all_nodes: list[Node]) -> str:
    """Why no node can take even one pod of this instance type, with the nearest node
    and what it lacks; empty when one can."""
    wanted = needs(instance_type)
    if GPU in wanted and not any(n.allocatable.get(GPU) for n in all_nodes):
        return (
            f"no node advertises {GPU}: is the NVIDIA device plugin installed? "
            f"Jobs of {instance_type.name} will wait until one does."
        )
    candidates = [n for n in all_nodes if matches(n, instance_type)]
    if not candidates:
        selector = ", ".join(f"{k}={v}" for k, v in instance_type.node_selector.items())
        return f"no Ready node has the labels {selector}: jobs of {instance_type.name} will wait."
    if any(how_many(n, wanted) > 0 for n in candidates):
        return ""

    # By allocatable (not free): the node that could hold it once emptied, else the nearest.
    def shortfall(node: Node) -> dict[str, Decimal]:
        return {k: v - node.allocatable.get(k, Decimal(0)) for k, v in wanted.items()
                if v > node.allocatable.get(k, Decimal(0))}  # fmt: skip

    nearest = min(candidates, key=lambda n: sum(float(v) for v in shortfall(n).values()))
    short = shortfall(nearest)
    if not short:
        return (
            f"no matching node has room now (nearest: {nearest.name}, busy): jobs of "
            f"{instance_type.name} will wait for running work to end."
        )
    lacking = ", ".join(f"{shown(v, k)} {k}" for k, v in short.items())
    return (
        f"no matching node is big enough: the nearest, {nearest.name}, lacks {lacking}; "
        f"jobs of {instance_type.name} will wait (unless an autoscaler adds a bigger node)."
    )


def shown(amount: Decimal, resource: str) -> str:
    if resource == "memory":
        return f"{amount / 2**30:.1f}Gi"
    return f"{amount.normalize():f}"
