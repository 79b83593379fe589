"""The job list page of a workspace holding 100,000 jobs: server time for its first page
(and filtered first pages), and the number of queries, which must not grow with the jobs.

    python bench/job_list.py [--jobs 100000] [--mode embedded|server]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import django_in_process  # noqa: E402 - after the project is importable


def main(args: argparse.Namespace) -> None:
    django_in_process(args.mode, "kstudio_bench_list")
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from compute.services import seed_local
    from jobs.models import Job, Status
    from studio.models import Membership, Workspace

    workspace = Workspace.objects.create(name="demo")
    compute = seed_local(workspace)
    user = User.objects.create_user("reader")
    Membership.objects.create(workspace=workspace, user=user, role="reader")
    started = time.perf_counter()
    statuses = [Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.RUNNING, Status.QUEUED]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batch = []
    for i in range(args.jobs):
        batch.append(
            Job(
                workspace=workspace,
                name=f"job_{i:06d}",
                experiment_name=f"exp-{i % 20}",
                spec={"type": "command", "command": "echo hi"},
                compute=compute,
                compute_name="local",
                compute_kind="local",
                instance_type="defaultinstancetype",
                status=statuses[i % len(statuses)],
                created_by=user,
            )
        )
        if len(batch) == 5000:
            Job.objects.bulk_create(batch)
            batch = []
    Job.objects.bulk_create(batch)
    # Spread creation times, as real jobs have them.
    for offset in range(0, args.jobs, 10000):
        Job.objects.filter(
            name__gte=f"job_{offset:06d}", name__lt=f"job_{offset + 10000:06d}"
        ).update(created_at=base + timedelta(minutes=offset))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"created {args.jobs} jobs in {time.perf_counter() - started:.1f} s ({args.mode})")

    client = Client()
    client.force_login(user)
    for label, url in [
        ("first page", "/workspaces/demo/jobs/"),
        ("status=Failed", "/workspaces/demo/jobs/?status=Failed"),
        ("experiment=exp-7", "/workspaces/demo/jobs/?experiment_name=exp-7"),
        ("page 2000", "/workspaces/demo/jobs/?page=2000"),
    ]:
        client.get(url)  # warm
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - t)
            assert response.status_code == 200
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        print(
            f"job list {label}: median {statistics.median(times) * 1000:.1f} ms, "
            f"max {max(times) * 1000:.1f} ms server time over {args.repeat} renders; "
            f"{len(queries.captured_queries)} queries"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    main(parser.parse_args())
