"""The experiment page with 10,000 runs and 1,000,000 metric points in one workspace:
server time of its first page (newest first, and sorted by a metric), a later page and
the experiments list, and the number of queries, which must not grow with the runs or
points.

    python bench/experiments.py [--runs 10000] [--points 1000000] [--mode embedded|server]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import django_in_process  # noqa: E402 - after the project is importable


def main(args: argparse.Namespace) -> None:
    django_in_process(args.mode, "kstudio_bench_experiments")
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from studio.models import Membership, Workspace
    from tracking.models import Experiment, Metric, Run

    workspace = Workspace.objects.create(name="demo")
    user = User.objects.create_user("reader")
    Membership.objects.create(workspace=workspace, user=user, role="reader")
    experiment = Experiment.objects.create(workspace=workspace, name="sweep")
    started = time.perf_counter()
    per_run = args.points // args.runs
    rng = random.Random(7)
    runs = Run.objects.bulk_create(
        Run(
            experiment=experiment,
            name=f"run-{i:05d}",
            status="FINISHED",
            start_time=1_760_000_000_000 + i * 1000,
            end_time=1_760_000_000_000 + i * 1000 + 60_000,
            user_id="reader",
            params={"lr": str(rng.choice([0.1, 0.01, 0.001]))},
            tags={"mlflow.runName": f"run-{i:05d}"},
            latest_metrics={
                "loss": {"value": rng.random(), "timestamp": i, "step": per_run - 1},
                "accuracy": {"value": rng.random(), "timestamp": i, "step": per_run - 1},
            },
        )
        for i in range(args.runs)
    )
    batch: list[Metric] = []
    for run in runs:
        for step in range(per_run):
            batch.append(Metric(run=run, key="loss", value=rng.random(), timestamp=step,
                                step=step))  # fmt: skip
        if len(batch) >= 50_000:
            Metric.objects.bulk_create(batch)
            batch = []
    Metric.objects.bulk_create(batch)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"created {args.runs:,} runs and {per_run * args.runs:,} metric points in "
          f"{time.perf_counter() - started:.1f} s ({args.mode})")  # fmt: skip

    client = Client()
    client.force_login(user)
    page = f"/workspaces/demo/experiments/{experiment.pk}/"
    for label, url in [
        ("experiment, first page", page),
        ("sorted by a metric", page + "?ordering=-metrics.loss"),
        ("page 100", page + "?page=100"),
        ("experiments list", "/workspaces/demo/experiments/"),
    ]:
        client.get(url)  # warm
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - t)
            assert response.status_code == 200, response.status_code
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        print(
            f"{label}: median {statistics.median(times) * 1000:.1f} ms, "
            f"max {max(times) * 1000:.1f} ms server time over {args.repeat} renders; "
            f"{len(queries.captured_queries)} queries"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    main(parser.parse_args())
