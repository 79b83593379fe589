"""Metric ingestion, side by side: the same stock-MLflow-client workload (runs x one
`log_batch` of metrics each, then the run's end) against a stock `mlflow server` (SQLite
backend, started here) and against the studio, each with one worker process; the figure
is the ratio of their throughputs.

    python bench/mlflow_ingest.py [--runs 100] [--metrics 1000] [--mode embedded|server]

Needs the full `mlflow` package for its server (`pip install -e '.[bench]'`, which
`make bench` does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PY, free_port, studio  # noqa: E402 - after the folder is importable

# The client's side: what a training loop does, timed there (process start-up excluded).
WORKLOAD = """
import json, sys, time
from mlflow import MlflowClient
from mlflow.entities import Metric
runs, per_run = int(sys.argv[1]), int(sys.argv[2])
client = MlflowClient()
experiment = client.create_experiment(f"ingest-{time.time_ns()}")
now = int(time.time() * 1000)
started = time.perf_counter()
for r in range(runs):
    run = client.create_run(experiment)
    metrics = [Metric(f"m{i % 10}", i * 0.5, now + i, i // 10) for i in range(per_run)]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)
elapsed = time.perf_counter() - started
history = client.get_metric_history(run.info.run_id, "m0")
print(json.dumps({"seconds": elapsed, "last_run_points": len(history)}))
"""


def run_workload(uri: str, token: str, runs: int, per_run: int) -> dict[str, float]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_TOKEN": token,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run(
        [PY, "-c", textwrap.dedent(WORKLOAD), str(runs), str(per_run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["last_run_points"] != per_run // 10:
        raise RuntimeError(f"the last run kept {result['last_run_points']} points of m0")
    return dict(result)


def stock_mlflow_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    mlflow = shutil.which("mlflow", path=str(Path(PY).parent))
    if mlflow is None:
        sys.exit("the full mlflow package is needed for its server: pip install -e '.[bench]'")
    port = free_port()
    server = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the mlflow server did not start")
        time.sleep(0.2)


def main(args: argparse.Namespace) -> None:
    points = args.runs * args.metrics
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as folder:
        server, url = stock_mlflow_server(Path(folder))
        try:
            run_workload(url, "", 2, args.metrics)  # warm-up: first requests, imports
            stock = run_workload(url, "", args.runs, args.metrics)
        finally:
            server.terminate()
            server.wait(30)
    with studio(args.mode) as s:
        uri = f"{s.url}/workspaces/demo/mlflow"
        run_workload(uri, s.token, 2, args.metrics)
        ours = run_workload(uri, s.token, args.runs, args.metrics)
    print(f"workload: {args.runs} runs x log_batch of {args.metrics} metrics (+ create, end)")
    for name, got in (("mlflow server (SQLite)", stock), (f"studio ({args.mode})", ours)):
        print(f"  {name:24} {got['seconds']:7.2f} s  {points / got['seconds']:10,.0f} points/s  "
              f"{args.runs / got['seconds']:7.1f} runs/s")  # fmt: skip
    print(f"  studio / mlflow throughput: {stock['seconds'] / ours['seconds']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    main(parser.parse_args())
