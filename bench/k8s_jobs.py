"""Jobs submitted to a Kubernetes compute target on the real control plane (devcluster:
kube-apiserver, etcd, controllers, scheduler; NODES process-kubelet nodes): how fast the
studio's controller creates their Kubernetes objects, how many API requests each job
costs besides lists and watches (from the API server's audit log, the studio's own
ServiceAccount only), and how long until the real scheduler has bound every job's pod.
Goals (issues 7 and 20): >= 100 jobs/s created, <= 3 API requests per job.

    python bench/k8s_jobs.py [--jobs 1000] [--nodes 20]

The Jobs are created while the only node is cordoned, so that no pod starts meanwhile;
then NODES nodes join and the scheduler binds the pods. The jobs name an image no node
can pull (`:unpullable`), so that once bound their pods start no process: what is
measured is the studio and the control plane, not 1,000 jobs running on two cores. The
requests per job are the whole of a job's life: its Job and Secret made, its pull
failure seen, and its Job deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDIO = "system:serviceaccount:kstudio-system:kstudio"
JOB = "command: echo hi\ncompute: azureml:k8s\nenvironment: {image: 'python:unpullable'}\n"


def studio_requests(audit_log: Path, since: int) -> list[str]:
    """The verbs of the studio's requests since `since` (each request once)."""
    seen, verbs = set(), []
    with open(audit_log, encoding="utf-8") as log:
        log.seek(since)
        for line in log:
            event = json.loads(line)
            if event["user"]["username"] == STUDIO and event["auditID"] not in seen:
                seen.add(event["auditID"])
                verbs.append(event["verb"])
    return verbs


def main(args: argparse.Namespace) -> None:
    var = tempfile.mkdtemp(prefix="kstudio-bench-k8s-")
    os.environ.update(STUDIO_VAR_DIR=var, DJANGO_SETTINGS_MODULE="studio.settings",
                      LOG_LEVEL="WARNING")  # fmt: skip
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    import yaml
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from compute import clusters
    from devcluster.cluster import DevCluster
    from jobs import services
    from studio.services import create_workspace
    from tests.conftest import _close_backends
    from tests.test_kubernetes import controller_thread

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench")
    workspace = create_workspace("bench", owner=user)
    kube = DevCluster().start(nodes=0)
    try:
        # One node for the install's preflight, then cordoned: while the controller
        # creates the Jobs no pod starts (nor fails and is cleaned up), so what is timed
        # is the creating alone; the 20 nodes come after, for the scheduler's part.
        kube.add_node("installer", cpu="1", memory="1Gi")
        cluster = clusters.register("bench", yaml.safe_dump(kube.kubeconfig()))
        clusters.attach(workspace, "k8s", cluster, "bench", create_namespace=True)
        assert not clusters.install(cluster, []).problems  # from now on, its own token
        kube.api.call("PATCH", "/api/v1/nodes/installer", {"spec": {"unschedulable": True}},
                      patch="application/merge-patch+json")  # fmt: skip

        started = time.perf_counter()
        for _ in range(args.jobs):
            services.submit_yaml(workspace, user, JOB, {})
        submitted = time.perf_counter() - started
        audit = kube.control.audit_log
        since = audit.stat().st_size

        made = {"offset": since, "jobs": 0}

        def jobs_made() -> int:
            # The studio's creates of Jobs, from the audit log as it grows: no request of
            # the harness competes with what is measured, and a Job the studio has
            # already failed and deleted still counts.
            with open(audit, encoding="utf-8") as log:
                log.seek(made["offset"])
                for line in log:
                    if not line.endswith("\n"):
                        break  # being written: read again next time
                    made["offset"] += len(line.encode())
                    event = json.loads(line)
                    ref = event.get("objectRef") or {}
                    if (event["user"]["username"] == STUDIO and event["verb"] == "create"
                            and ref.get("resource") == "jobs" and not ref.get("subresource")
                            and event.get("stage") == "ResponseComplete"):  # fmt: skip
                        made["jobs"] += 1
            return made["jobs"]

        bound_pods: set[str] = set()

        def bound_so_far() -> int:
            # Every pod the scheduler has bound: the studio fails a job whose image cannot
            # be pulled, and deletes its pod, so pods are counted as they are seen bound.
            items = kube.api.call("GET", "/api/v1/namespaces/bench/pods")["items"]
            bound_pods.update(i["metadata"]["uid"] for i in items if i["spec"].get("nodeName"))
            return len(bound_pods)

        controller = controller_thread("bench")
        started = time.perf_counter()
        while jobs_made() < args.jobs:
            time.sleep(0.05)
        created = time.perf_counter() - started
        nodes_at = time.perf_counter()
        for i in range(args.nodes):
            kube.add_node(f"node-{i + 1}", cpu="64", memory="1Ti", pods=250)
        ready = time.perf_counter() - nodes_at
        print(f"{args.nodes} nodes Ready in {ready:.1f} s", flush=True)
        deadline = time.monotonic() + 600
        while bound_so_far() < args.jobs:
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        bound = time.perf_counter() - nodes_at
        controller.stop()
        verbs = studio_requests(audit, since)
        watching = [v for v in verbs if v in ("list", "watch")]
        per_job = (len(verbs) - len(watching)) / args.jobs
        pods = len(bound_pods)
    finally:
        _close_backends()  # the studio's watches and log followers, before their server
        kube.stop()
    print(
        f"kubernetes jobs ({args.jobs}, real kube-apiserver {kube.binaries.name}, "
        f"{args.nodes} process-kubelet nodes): submitted in {submitted:.1f} s; "
        f"Kubernetes Jobs created in {created:.2f} s = {args.jobs / created:.0f} jobs/s; "
        f"{per_job:.2f} API requests per job besides {len(watching)} list/watch calls; "
        f"{pods} pods bound by the scheduler {bound:.1f} s after {args.nodes} nodes were added "
        f"(Ready in {ready:.1f} s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=20)
    main(parser.parse_args())
