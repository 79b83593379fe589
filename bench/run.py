"""Run every benchmark and print its figures (`make bench`)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["log_latency.py", "--mode", "embedded"],
    ["log_latency.py", "--mode", "server"],
    ["submissions.py"],
    ["job_list.py", "--mode", "embedded"],
    ["job_list.py", "--mode", "server"],
    ["k8s_jobs.py"],
    ["experiments.py", "--mode", "embedded"],
    ["mlflow_ingest.py", "--mode", "embedded"],
    ["mlflow_ingest.py", "--mode", "server"],
    ["router.py", "--mode", "embedded"],
]

if __name__ == "__main__":
    failed = 0
    for run in RUNS:
        print(f"$ python bench/{' '.join(run)}", flush=True)
        failed |= subprocess.run(
            [sys.executable, str(HERE / run[0]), *run[1:]], cwd=HERE
        ).returncode
    sys.exit(failed)
