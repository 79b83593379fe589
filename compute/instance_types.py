"""Instance types per cluster, kept in step with the cluster's InstanceType objects.

Studio -> cluster: saving or deleting one of a cluster's instance types applies it there
first (server-side apply), and keeps the row only once the cluster took it. Cluster ->
studio: `mirror` makes the rows match the objects a watch sees (`InstanceTypeWatch`,
run by the controller), so one made with `kubectl` appears within seconds.

`defaultinstancetype` always exists: the built-in one when the cluster has no object of
that name, the object when it has one; deleting the object falls back to the built-in.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, close_old_connections, transaction
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import capacity, extension, kube
from compute.models import Cluster, InstanceType, InstanceTypeOrigin, instance_type_name_validator
from compute.resources import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_RESOURCES,
    quantity,
    validate_resources,
)
from studio.errors import FieldErrors

log = logging.getLogger(__name__)

API_VERSIONS = (f"{extension.GROUP}/{extension.VERSION}", f"{extension.AZURE_GROUP}/v1alpha1")


def check(name: str, node_selector: Any, resources: Any, *, strict: bool) -> list[tuple[str, str]]:
    """Every problem with an instance type, by field. Strict (a cluster's): Azure's rules,
    as the CRD enforces them: cpu and memory required and non-zero in requests and in
    limits; nvidia.com/gpu a whole number, in limits only (0 or null: none)."""
    problems: list[tuple[str, str]] = []
    try:
        instance_type_name_validator(name)
    except ValidationError as exc:
        problems.append(("name", exc.messages[0]))
    if not isinstance(node_selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items()
    ):
        problems.append(("spec.nodeSelector", "must map label names to string values"))
    if not isinstance(resources, dict):
        return [*problems, ("spec.resources", "must be a mapping with requests and limits")]
    if strict:
        for section in ("requests", "limits"):
            values = resources.get(section)
            if not isinstance(values, dict):
                problems.append((f"spec.resources.{section}", "required, with cpu and memory"))
                continue
            for key, value in values.items():
                where = f"spec.resources.{section}.{key}"
                if key == "nvidia.com/gpu":
                    if section == "requests":
                        problems.append((where, "GPUs are set in limits only"))
                    elif value is not None and not (type(value) is int and value >= 0):
                        problems.append((where, "must be a whole number (0 or null: none)"))
                    continue
                if key not in ("cpu", "memory"):
                    problems.append((where, "unknown resource; use cpu, memory, nvidia.com/gpu"))
                    continue
            for key in ("cpu", "memory"):
                where = f"spec.resources.{section}.{key}"
                if key not in values:
                    problems.append((where, "required"))
                    continue
                try:
                    if quantity(values[key]) <= 0:
                        problems.append((where, "must be greater than zero"))
                except (ValueError, TypeError, ArithmeticError):
                    problems.append((where, f"{values[key]!r} is not a quantity (2, 500m, 4Gi)"))
        if problems:
            return problems
    cleaned = {s: {k: v for k, v in (resources.get(s) or {}).items()
                   if not (k == "nvidia.com/gpu" and not v)}
               for s in ("requests", "limits") if s in resources}  # fmt: skip
    try:
        validate_resources(cleaned)
    except ValidationError as exc:
        for message in exc.messages:
            field, _, text = message.partition(": ")
            problems.append((f"spec.{field}", text.rstrip(".")))
    return problems


def as_object(instance_type: InstanceType) -> dict[str, Any]:
    return {
        "apiVersion": f"{extension.GROUP}/{extension.VERSION}",
        "kind": "InstanceType",
        "metadata": {"name": instance_type.name, "labels": dict(extension.PART_OF)},
        "spec": {"nodeSelector": instance_type.node_selector, "resources": instance_type.resources},
    }


def objects_in(document: Any) -> list[dict[str, Any]]:
    """The InstanceType objects of a file: one object or an InstanceTypeList, in this
    studio's group or Azure's; FieldErrors naming what is wrong."""
    if not isinstance(document, dict):
        raise FieldErrors([("(file)", "expected an InstanceType or an InstanceTypeList")])
    if document.get("apiVersion") not in API_VERSIONS:
        raise FieldErrors([("apiVersion", f"expected one of {', '.join(API_VERSIONS)}")])
    kind = document.get("kind")
    if kind == "InstanceTypeList":
        items = document.get("items")
        if not isinstance(items, list):
            raise FieldErrors([("items", "expected a list of InstanceType objects")])
        return [item if isinstance(item, dict) else {} for item in items]
    if kind != "InstanceType":
        raise FieldErrors([("kind", "expected InstanceType or InstanceTypeList")])
    return [document]


Wanted = tuple[str, Any, Any, str]  # name, nodeSelector, resources, description


def from_document(document: Any) -> list[Wanted]:
    """What a file asks for, item by item (see `objects_in`)."""
    return [
        ((obj.get("metadata") or {}).get("name", ""), (obj.get("spec") or {}).get("nodeSelector")
         or {}, (obj.get("spec") or {}).get("resources"), "")
        for obj in objects_in(document)
    ]  # fmt: skip


def save_all(cluster: Cluster, wanted: list[Wanted]) -> list[InstanceType]:
    """Every item checked before any is applied: one bad item stores nothing."""
    problems = [
        (f"items[{i}].{field}" if len(wanted) > 1 else field, message)
        for i, (name, selector, resources, _) in enumerate(wanted)
        for field, message in check(name, selector, resources, strict=True)
    ]
    if problems:
        raise FieldErrors(problems)
    return [save(cluster, *item) for item in wanted]


def fit_warnings(cluster: Cluster, rows: list[InstanceType]) -> dict[str, str]:
    """For each saved instance type that no node can take now, why (never a refusal)."""
    try:
        seen = capacity.nodes(cluster)
    except Exception:  # the cluster cannot say now
        return {}
    return {row.name: said for row in rows if (said := capacity.warning(row, seen))}


def save(cluster: Cluster | None, name: str, node_selector: Any, resources: Any,
         description: str = "") -> InstanceType:  # fmt: skip
    """Create or replace one instance type of a cluster (or of the local host)."""
    problems = check(name, node_selector, resources, strict=cluster is not None)
    if problems:
        raise FieldErrors(problems)
    fields = {"node_selector": node_selector, "resources": resources,
              "description": description, "origin": InstanceTypeOrigin.STUDIO}  # fmt: skip
    if cluster is not None:  # the cluster first: nothing kept when it refuses
        try:
            extension.apply(kube.api_client(cluster), as_object(InstanceType(name=name, **fields)))
        except ApiException as exc:
            said = kube.in_words(exc)
            if exc.status == 404:  # no such resource: the CRD is not there
                said = "the studio's extension is not installed (kstudio cluster install)"
            raise kube.refused(cluster, exc, said) from exc
        except Exception as exc:  # whatever it said, in words
            raise kube.refused(cluster, exc) from exc
    return _upsert(cluster, name, fields)


def _upsert(cluster: Cluster | None, name: str, fields: dict[str, Any]) -> InstanceType:
    """Create or update one row; the watch may be creating the same one meanwhile."""
    for attempt in range(2):
        try:
            with transaction.atomic():
                row, _ = InstanceType.objects.update_or_create(
                    cluster=cluster, name=name, defaults=fields
                )
            return row
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def delete(cluster: Cluster, name: str) -> None:
    """Delete one of a cluster's instance types, there first (the local host's go through
    compute.services.delete_instance_type)."""
    if not InstanceType.objects.filter(cluster=cluster, name=name).exists():
        raise FieldErrors([("name", f"no instance type {name!r} in cluster {cluster.name!r}")])
    try:
        extension.request(kube.api_client(cluster), "DELETE", _path(name))
    except ApiException as exc:
        if exc.status != 404:
            raise kube.refused(cluster, exc) from exc
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc
    _gone(cluster, name)


def _path(name: str = "") -> str:
    base = f"/apis/{extension.GROUP}/{extension.VERSION}/instancetypes"
    return f"{base}/{name}" if name else base


def ensure_default(cluster: Cluster | None) -> None:
    InstanceType.objects.get_or_create(
        cluster=cluster,
        name=DEFAULT_INSTANCE_TYPE,
        defaults={"resources": DEFAULT_RESOURCES, "origin": InstanceTypeOrigin.BUILTIN,
                  "description": "Used when a job names no instance type."},
    )  # fmt: skip


def _gone(cluster: Cluster, name: str) -> None:
    """The object is gone from the cluster: so is its row, but the default falls back."""
    if name == DEFAULT_INSTANCE_TYPE:
        InstanceType.objects.filter(cluster=cluster, name=name).update(
            resources=DEFAULT_RESOURCES, node_selector={}, origin=InstanceTypeOrigin.BUILTIN
        )
    else:
        InstanceType.objects.filter(cluster=cluster, name=name).delete()


def mirror(cluster: Cluster, objects: list[dict[str, Any]], *, complete: bool) -> None:
    """Make the cluster's rows match these objects; `complete`: they are all there is
    (a list), so rows without an object go."""
    seen = set()
    for obj in objects:
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        seen.add(name)
        current = InstanceType.objects.filter(cluster=cluster, name=name).first()
        mirrored = {"node_selector": spec.get("nodeSelector") or {},
                    "resources": spec.get("resources") or {}}  # fmt: skip
        if current is not None and all(getattr(current, k) == v for k, v in mirrored.items()):
            continue  # what the studio applied, seen back: it stays the studio's
        _upsert(cluster, name, {**mirrored, "origin": InstanceTypeOrigin.CLUSTER})  # fmt: skip
    if complete:
        for name in InstanceType.objects.filter(cluster=cluster).exclude(
            name__in=seen
        ).exclude(origin=InstanceTypeOrigin.BUILTIN).values_list("name", flat=True):  # fmt: skip
            _gone(cluster, name)
    ensure_default(cluster)


class InstanceTypeWatch:
    """Follows one cluster's InstanceType objects into the studio (list, then watch from
    its resourceVersion; 410: list again; the CRD not installed yet: try again later)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, daemon=True, name=f"instance-types-{cluster.name}"
        )
        self.thread.start()

    def _run(self) -> None:
        def listed(items: list[dict[str, Any]]) -> None:
            mirror(self.cluster, items, complete=True)
            close_old_connections()

        def changed(event: str, obj: dict[str, Any]) -> None:
            if event == "DELETED":
                _gone(self.cluster, obj["metadata"]["name"])
            else:
                mirror(self.cluster, [obj], complete=False)
            close_old_connections()

        try:
            api = client.CustomObjectsApi(kube.api_client(self.cluster))
        except Exception as exc:  # a kubeconfig that cannot be read: nothing to follow
            log.warning("instance types of %s: %s", self.cluster.name, kube.in_words(exc))
            return
        lister = functools.partial(
            api.list_cluster_custom_object, extension.GROUP, extension.VERSION, "instancetypes"
        )
        kube.list_and_watch(
            lister, listed, changed, self.stop, f"instance types of {self.cluster.name}"
        )


_watches: dict[int, tuple[Any, InstanceTypeWatch]] = {}


def follow_clusters() -> None:
    """Called by the controller now and then: one watch per cluster, new ones started,
    those of changed or deleted clusters replaced or stopped."""
    current = {c.pk: c for c in Cluster.objects.all()}
    for pk, (stamp, watch) in list(_watches.items()):
        if pk not in current or current[pk].updated_at != stamp:
            watch.stop.set()
            del _watches[pk]
    for pk, cluster in current.items():
        if pk not in _watches:
            _watches[pk] = (cluster.updated_at, InstanceTypeWatch(cluster))


def stop_following() -> None:
    for _, watch in _watches.values():
        watch.stop.set()
    with contextlib.suppress(Exception):
        _watches.clear()
