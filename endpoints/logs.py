"""A deployment's log store: the lines of its model servers (`inference-server`) and of
their preparation (`storage-initializer`: the environment build locally, the init
container on a cluster), read by the runner from where they are written (a file per
local instance, each pod's containers), stored with a seq as a job's lines are, and sent
to the deployment's socket group. Sockets and pages read the store, never the sources.
"""

from __future__ import annotations

import json
import time
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
from compute.backends.kubernetes import lines_after, parse_stamp
from compute.models import ComputeKind
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
    """At most STUDIO_DEPLOYMENT_LOG_RATE lines a read (a second): the latest, after a line
    saying how many were left out. A busy model server logs every request, and storing
    thousands a second would cost its router more than the requests (the instances' own
    logs keep every line; `get-logs` reads them there)."""
    keep = settings.STUDIO_DEPLOYMENT_LOG_RATE
    if len(lines) <= keep:
        return lines
    left_out = len(lines) - keep
    first = lines[left_out]
    note = Line(
        first.ts, first.instance, first.container,
        f"({left_out} lines not kept here: more than {keep} a second; "
        "get-logs reads every line from the instance)",
    )  # fmt: skip
    return [note, *lines[left_out:]]


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


def _from_pods(deployment: Deployment, cursors: dict[str, Any]) -> list[Line]:
    """Every pod of the deployment (all generations), each container that has started,
    read with timestamps from a little before its cursor; a container that had ended when
    it was read is not read again."""
    target = deployment.endpoint.compute
    assert target.cluster is not None
    namespace = target.namespace or "default"
    lines: list[Line] = []
    present = set()
    with kube_client.shared_client(target.cluster) as api:
        core = client.CoreV1Api(api)
        selector = f"{kube.DEPLOYMENT_LABEL}={kube.names(deployment)}"
        for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
            name = str(pod.metadata.name) if pod.metadata else ""
            status = pod.status
            statuses = [
                *((status and status.init_container_statuses) or []),
                *((status and status.container_statuses) or []),
            ]
            for each in statuses:
                key = f"{name}/{each.name}"
                present.add(key)
                mark = dict(cursors.get(key) or {"after": "", "seen": 0, "done": False})
                state = each.state
                started = state and (state.running or state.terminated)
                if mark["done"] or not (
                    started or (each.last_state and each.last_state.terminated)
                ):
                    cursors[key] = mark
                    continue
                ended = bool(state and state.terminated)
                since = None
                if mark["after"]:  # a little before the last line (clocks differ)
                    since = int(time.time() - parse_stamp(mark["after"])[0]) + 5
                try:
                    response: Any = core.read_namespaced_pod_log(
                        name,
                        namespace,
                        container=each.name,
                        timestamps=True,
                        since_seconds=since,
                        limit_bytes=READ_BYTES,
                        _preload_content=False,
                    )
                    raw = bytes(response.data)
                except ApiException as exc:
                    if exc.status in (400, 404):  # not started after all, or gone
                        cursors[key] = mark
                        continue
                    raise
                taken, mark["after"], mark["seen"], _ = lines_after(
                    raw.split(b"\n"), mark["after"], mark["seen"], mark["seen"]
                )
                mark["done"] = ended
                cursors[key] = mark
                for stamp, text in taken:
                    seconds, nanos = parse_stamp(stamp)
                    lines.append(Line(seconds + nanos / 1e9, name, each.name, text))
    for gone in set(cursors) - present:
        del cursors[gone]
    lines.sort(key=lambda each: each.ts)
    return lines
