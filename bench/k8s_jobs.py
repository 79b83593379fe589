"""Jobs submitted to a Kubernetes compute target, against the fake API server over real
HTTP (tests/kube: no cluster exists here): how fast the controller creates their
Kubernetes objects, and how many API requests each job costs besides the watches.
Goals (issue 7): >= 100 jobs/s created, <= 3 API requests per job.

    python bench/k8s_jobs.py [--jobs 1000]

The cluster has no node, so every pod stays Pending: the jobs end Queued with the
scheduler's reason, which the controller must also read (from its watches) and store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
    from jobs import services
    from jobs.models import Job
    from studio.services import create_workspace
    from tests.kube.cluster import FakeCluster
    from tests.test_kubernetes import controller_thread

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench")
    workspace = create_workspace("bench", owner=user)
    kube = FakeCluster().start()
    cluster = clusters.register("bench", yaml.safe_dump(kube.kubeconfig()))
    clusters.attach(workspace, "k8s", cluster, "bench", create_namespace=True)

    started = time.perf_counter()
    for _ in range(args.jobs):
        services.submit_yaml(workspace, user, "command: echo hi\ncompute: azureml:k8s\n", {})
    submitted = time.perf_counter() - started
    jobs_kind = kube.api.kind("batch", "jobs")
    before = len(kube.api.requests)

    controller = controller_thread("bench")
    started = time.perf_counter()
    while kube.api.count(jobs_kind, "bench") < args.jobs:
        time.sleep(0.05)
    created = time.perf_counter() - started
    deadline = time.monotonic() + 120
    while Job.objects.filter(waiting_reason__contains="nodes available").count() < args.jobs:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    settled = time.perf_counter() - started
    controller.stop()
    requests = kube.api.requests[before:]
    watching = [r for r in requests if r[0] == "GET" and r[1].endswith(("/jobs", "/pods"))]
    per_job = (len(requests) - len(watching)) / args.jobs
    waiting = Job.objects.filter(status="Queued").exclude(waiting_reason="").count()
    kube.stop()
    print(
        f"kubernetes jobs ({args.jobs}, fake API server over HTTP): "
        f"submitted in {submitted:.1f} s; "
        f"Kubernetes Jobs created in {created:.2f} s = {args.jobs / created:.0f} jobs/s; "
        f"{per_job:.2f} API requests per job besides {len(watching)} list/watch calls; "
        f"{waiting} Queued with the scheduler's reason after {settled:.1f} s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    main(parser.parse_args())
