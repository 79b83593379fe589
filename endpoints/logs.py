"""A deployment's log store: the lines of its model servers (`inference-server`) and of
their preparation (`storage-initializer`: the environment build locally, the init
container on a cluster), read by the runner from where they are written (a file per
local instance, each pod's containers), stored with a seq as a job's lines are, and sent
to the deployment's socket group. Sockets and pages read the store, never the sources.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import kube as kube_client
from compute.models import Cluster, ComputeKind
from compute.podlogs import ContainerLog, parse_stamp
from endpoints import kube
from endpoints.models import Deployment, DeploymentLog, DeploymentLogLine
from jobs.services import storable
from studio import events

READ_BYTES = 1024 * 1024  # at most this much of one source per read: the rest comes next time


def group(deployment_id: int) -> str:
    """The channel-layer group that carries the deployment's new lines."""
    return f"deployment-{deployment_id}-logs"


@dataclass
class Line:
    ts: float
    instance: str
    container: str
    line: str


def collect(deployment: Deployment) -> int:
    """Read what the deployment's containers wrote since the last call and store it;
    how many lines. On a cluster, failures to reach it are raised (the runner says so)."""
    log, _ = DeploymentLog.objects.get_or_create(deployment=deployment)
    cursors = dict(log.cursors)
    if deployment.endpoint.compute.kind == ComputeKind.KUBERNETES:
        lines = _from_pods(deployment, cursors)
    else:
        lines = _from_files(Path(settings.STUDIO_DEPLOYMENTS_DIR) / str(deployment.pk), cursors)
    if not lines and cursors == log.cursors:
        return 0
    return _append(deployment, _within_rate(lines), cursors)


def _within_rate(lines: list[Line]) -> list[Line]:
    """At most STUDIO_DEPLOYMENT_LOG_RATE lines a read (a second) of each container: its
    latest, after a line saying how many were left out. A busy model server logs every
    request, and storing thousands a second would cost its router more than the requests
    (the instances' own logs keep every line; `get-logs` reads them there). Counted per
    container, so a busy one never crowds out another's few lines (a new pod's
    initializer, say)."""
    keep = settings.STUDIO_DEPLOYMENT_LOG_RATE
    by_source: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_source.setdefault((line.instance, line.container), []).append(line)
    if all(len(some) <= keep for some in by_source.values()):
        return lines
    kept: list[Line] = []
    for some in by_source.values():
        left_out = max(0, len(some) - keep)
        if left_out:
            first = some[left_out]
            kept.append(Line(
                first.ts, first.instance, first.container,
                f"({left_out} lines not kept here: more than {keep} a second; "
                "get-logs reads every line from the instance)",
            ))  # fmt: skip
        kept.extend(some[left_out:])
    kept.sort(key=lambda line: line.ts)  # stable: a note stays before the line it precedes
    return kept


def lines_of(deployment: Deployment, after: int = 0, limit: int | None = None) -> QuerySet:
    rows = DeploymentLogLine.objects.filter(deployment=deployment, seq__gt=after).order_by("seq")
    return rows[:limit] if limit is not None else rows


def _append(deployment: Deployment, lines: list[Line], cursors: dict[str, Any]) -> int:
    with transaction.atomic():
        log = DeploymentLog.objects.select_for_update().get(deployment=deployment)
        rows = [
            DeploymentLogLine(
                deployment=deployment,
                seq=log.last_seq + i,
                ts=datetime.fromtimestamp(each.ts, tz=UTC),
                instance=each.instance[:253],
                container=each.container,
                line=storable(each.line),
            )
            for i, each in enumerate(lines, start=1)
        ]
        DeploymentLogLine.objects.bulk_create(rows)
        log.last_seq += len(rows)
        log.cursors = cursors
        log.save(update_fields=["last_seq", "cursors"])
        # A deployment serves for months: only its latest lines are kept.
        keep = settings.STUDIO_DEPLOYMENT_LOG_LINES
        DeploymentLogLine.objects.filter(
            deployment=deployment, seq__lte=log.last_seq - keep
        ).delete()
        if rows:
            batch = {
                "type": "log.lines",
                "first": rows[0].seq,
                "texts": [json.dumps(row.as_message()) for row in rows],
            }
            events.publish((group(deployment.pk), batch))
    return len(rows)


def _from_files(folder: Path, cursors: dict[str, Any]) -> list[Line]:
    """Local instances: `<generation>/instance-<n>.log` and the generation's
    `storage-initializer.log`, each read on from its byte offset (whole lines only)."""
    lines: list[Line] = []
    present = set()
    now = time.time()
    # A generation's preparation before its instances: in that order they were written.
    paths = sorted(folder.glob("*/*.log"), key=lambda p: (p.parent.name, p.stem.startswith("i"), p))
    for path in paths:
        generation = path.parent.name
        if path.name == "storage-initializer.log":
            instance, container = f"g{generation}", "storage-initializer"
        elif path.name.startswith("instance-"):
            instance, container = f"g{generation}-{path.stem}", "inference-server"
        else:
            continue
        key = f"{generation}/{path.name}"
        present.add(key)
        offset = int(cursors.get(key, 0))
        try:
            with open(path, "rb") as f:
                if offset > f.seek(0, 2):  # made anew: from its start
                    offset = 0
                f.seek(offset)
                data = f.read(READ_BYTES)
        except OSError:
            continue
        complete = data[: data.rfind(b"\n") + 1]
        if not complete and len(data) == READ_BYTES:
            complete = data  # one line longer than a read: taken as it is
        for raw in complete.splitlines():
            lines.append(Line(now, instance, container, raw.decode("utf-8", errors="replace")))
        cursors[key] = offset + len(complete)
    for gone in set(cursors) - present:
        del cursors[gone]
    return lines


# The containers followed, by deployment and "pod/container": this process's (the
# runner's), one stream each for as long as the container runs.
_followed: dict[int, dict[str, ContainerLog]] = {}
_followed_lock = threading.Lock()


def _core_of(cluster: Cluster) -> Callable[[], client.CoreV1Api]:
    def core() -> client.CoreV1Api:
        with kube_client.shared_client(cluster) as api:
            return client.CoreV1Api(api)

    return core


def _has_ended(
    core: Callable[[], client.CoreV1Api], namespace: str, pod: str, container: str
) -> bool:
    """Asked when a container's stream closed: closed because the container ended (its
    whole log read), or to be opened again?"""
    try:
        status = core().read_namespaced_pod(pod, namespace).status
    except ApiException as exc:
        return exc.status == 404
    if status is None:
        return False
    for each in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        if each.name == container:
            return bool(each.state and each.state.terminated)
    return False


def _from_pods(deployment: Deployment, cursors: dict[str, Any]) -> list[Line]:
    """Every pod of the deployment (all generations), each container that has started,
    followed from its cursor (the pods as the watch sees them; one stream a container); a
    container whose log was read to its end is not followed again."""
    target = deployment.endpoint.compute
    assert target.cluster is not None
    namespace = target.namespace or "default"
    pods = kube.pods_of(deployment, target)
    with _followed_lock:
        followed = _followed.setdefault(deployment.pk, {})
    lines: list[Line] = []
    present = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        statuses = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        for each in statuses:
            container = each["name"]
            key = f"{name}/{container}"
            present.add(key)
            mark = dict(cursors.get(key) or {"after": "", "seen": 0, "done": False})
            cursors[key] = mark
            state = each.get("state") or {}
            started = state.get("running") or state.get("terminated")
            if mark["done"] or not (started or (each.get("lastState") or {}).get("terminated")):
                continue
            follower = followed.get(key)
            if follower is None:
                core = _core_of(target.cluster)
                over = functools.partial(_has_ended, core, namespace, name, container)
                follower = followed[key] = ContainerLog(
                    core, namespace, name, container, mark["after"], int(mark["seen"]), ended=over
                ).start()
            done = follower.done  # before taking: a log done has all its lines waiting
            for stamp, text in follower.take():
                if stamp == mark["after"]:
                    mark["seen"] += 1
                else:
                    mark["after"], mark["seen"] = stamp, 1
                seconds, nanos = parse_stamp(stamp)
                lines.append(Line(seconds + nanos / 1e9, name, container, text))
            mark["done"] = done
    for gone in set(cursors) - present:
        del cursors[gone]
    for key in [k for k in followed if k not in cursors or cursors[k]["done"]]:
        followed.pop(key).stop()
    lines.sort(key=lambda each: each.ts)
    return lines


def stop_following(keep: set[int]) -> None:
    """Streams of deployments not in `keep` (deleted, or no longer on a cluster) end."""
    with _followed_lock:
        for pk in [pk for pk in _followed if pk not in keep]:
            for follower in _followed.pop(pk).values():
                follower.stop()
