"""Submissions: 1,000 jobs through the API reach Queued (server mode, no controller running,
so nothing else competes), then the controller's hand-off: how long a queued job waits
before the controller hands it to its backend (Queued -> Preparing), with room to run it.

    python bench/submissions.py [--jobs 1000] [--concurrency 16] [--workers 2]

Needs ApacheBench (apt-get install apache2-utils).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from datetime import datetime

from common import percentile, studio

JOB = {"yaml": 'command: echo "hello world"\n'}


def throughput(args: argparse.Namespace) -> None:
    """ApacheBench sends the requests: a C client, so the figure is the studio's, not the
    load generator's (a Python client costs a quarter of a core at this rate)."""
    if shutil.which("ab") is None:
        raise SystemExit("needs ApacheBench: apt-get install apache2-utils")
    with (
        studio("server", workers=args.workers, controller=False) as s,
        tempfile.NamedTemporaryFile("w", suffix=".json") as body,
    ):
        json.dump(JOB, body)
        body.flush()
        output = subprocess.run(
            [
                "ab",
                "-q",
                "-n",
                str(args.jobs),
                "-c",
                str(args.concurrency),
                "-p",
                body.name,
                "-T",
                "application/json",
                "-H",
                f"Authorization: Bearer {s.token}",
                s.url + "/api/v1/workspaces/demo/jobs/",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures = dict(
            line.split(":", 1)
            for line in output.splitlines()
            if line.startswith(("Requests per second", "Time taken", "Non-2xx", "Complete"))
        )
        with s.client() as http:
            queued = http.get(
                "/api/v1/workspaces/demo/jobs/", params={"status": "Queued", "limit": 1}
            ).json()["count"]
    print(
        f"submissions (server mode, {args.workers} web workers, {args.concurrency} at a time): "
        f"{figures['Complete requests'].strip()} in {figures['Time taken for tests'].strip()}"
        f" = {figures['Requests per second'].split('[')[0].strip()}/s; "
        f"non-2xx {figures.get('Non-2xx responses', ' 0').strip()}; "
        f"Queued in the studio {queued}"
    )


def handoff(args: argparse.Namespace) -> None:
    with studio("server", workers=1, controller=True) as s, s.client() as http:
        names = []
        for _ in range(args.handoffs):
            names.append(http.post("/api/v1/workspaces/demo/jobs/", json=JOB).json()["name"])
            time.sleep(0.05)  # spaced submissions: one hand-off at a time, not a backlog
        waits = []
        for name in names:
            deadline = time.monotonic() + 60
            while True:
                job = http.get(f"/api/v1/workspaces/demo/jobs/{name}/").json()
                times = {c["status"]: c["at"] for c in job["status_history"]}
                if "Preparing" in times:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was never handed off")
                time.sleep(0.05)
            queued = datetime.fromisoformat(times["Queued"])
            preparing = datetime.fromisoformat(times["Preparing"])
            waits.append((preparing - queued).total_seconds())
    print(
        f"hand-off Queued -> Preparing ({len(waits)} jobs, server mode): "
        f"p50 {percentile(waits, 50) * 1000:.1f} ms, p90 {percentile(waits, 90) * 1000:.1f} ms, "
        f"max {max(waits) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--handoffs", type=int, default=50)
    args = parser.parse_args()
    throughput(args)
    handoff(args)
