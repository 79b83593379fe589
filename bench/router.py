"""The inference router's cost, side by side in one run: the same small scoring request
sent straight to a deployment's model server and through the router (key check, traffic
split, forwarding), on loopback.

- latency: one request at a time, 2,000 each way (interleaved), p50 and p99 added;
- throughput: ApacheBench, 16 at a time, 5,000 each way, five rounds in turn: the
  median requests/s.

    python bench/router.py [--mode embedded|server] [--requests 2000]

Azure documents its Kubernetes router at about 3 ms added on average and 15 ms at p99.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, studio  # noqa: E402 - after the folder is importable

SCORE = b"""
import json

def init():
    pass

def run(raw_data):
    return {"echo": json.loads(raw_data)["data"]}
"""
BODY = json.dumps({"data": [[1.0, 2.0, 3.0, 4.0]]}).encode()


def code_archive() -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("score.py")
        info.size = len(SCORE)
        tar.addfile(info, io.BytesIO(SCORE))
    out.seek(0)
    return out


def ab(url: str, key: str, requests: int, concurrency: int) -> float:
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as body:
        body.write(BODY)
        body.flush()
        command = [
            "ab",
            "-q",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-p",
            body.name,
            "-T",
            "application/json",
        ]
        if key:
            command += ["-H", f"Authorization: Bearer {key}"]
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    figures = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    failed = int(figures.get("Failed requests", "0").strip() or 0)
    non_2xx = int(figures.get("Non-2xx responses", "0").strip() or 0)
    if failed or non_2xx:
        raise RuntimeError(f"{failed} failed, {non_2xx} non-2xx through {url}")
    return float(figures["Requests per second"].split("[")[0])


def main(args: argparse.Namespace) -> None:
    with studio(args.mode) as s, s.client() as http:
        base = "/api/v1/workspaces/demo/online-endpoints/"
        made = http.post(base, json={"yaml": "name: bench-endpoint\n"})
        made.raise_for_status()
        spec = {
            "name": "blue",
            "endpoint_name": "bench-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"},
            "environment_variables": {"WORKER_COUNT": "2"},
            "request_settings": {"max_concurrent_requests_per_instance": 64},
        }
        answer = http.post(
            base + "bench-endpoint/deployments/",
            params={"all_traffic": "true"},
            data={"spec": json.dumps(spec)},
            files={"code": ("code.tar.gz", code_archive())},
        )
        answer.raise_for_status()
        deadline = time.monotonic() + 60
        while True:
            shown = http.get(base + "bench-endpoint/deployments/blue/").json()
            if shown["provisioning_state"] == "Succeeded":
                break
            if shown["provisioning_state"] == "Failed" or time.monotonic() > deadline:
                raise SystemExit(f"the deployment did not start: {shown}")
            time.sleep(0.2)
        key = http.post(base + "bench-endpoint/get-credentials/").json()["primaryKey"]
        via = made.json()["scoring_uri"]
        # The instance's own address, from its log (the API keeps it to itself).
        log = http.get(base + "bench-endpoint/deployments/blue/logs/", params={"lines": 50}).text
        found = re.search(r"listening on (127\.0\.0\.1:\d+)", log)
        if found is None:
            raise SystemExit(f"no address in the model server's log: {log}")
        direct = f"http://{found.group(1)}/score"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        with httpx.Client(timeout=10) as client:
            for _ in range(200):  # warm both paths: connections, imports, caches
                client.post(direct, content=BODY, headers=headers).raise_for_status()
                client.post(via, content=BODY, headers=headers).raise_for_status()
            times: dict[str, list[float]] = {"direct": [], "router": []}
            for _ in range(args.requests):
                for name, url in (("direct", direct), ("router", via)):
                    started = time.perf_counter()
                    client.post(url, content=BODY, headers=headers).raise_for_status()
                    times[name].append((time.perf_counter() - started) * 1000)
        print(f"router ({args.mode}), {args.requests} requests each way, one at a time:")
        for name in ("direct", "router"):
            values = times[name]
            print(
                f"  {name:7} p50 {percentile(values, 50):6.2f} ms  p99 "
                f"{percentile(values, 99):6.2f} ms  mean {statistics.fmean(values):6.2f} ms"
            )
        added_50 = percentile(times["router"], 50) - percentile(times["direct"], 50)
        added_99 = percentile(times["router"], 99) - percentile(times["direct"], 99)
        print(f"  added by the router: p50 {added_50:.2f} ms, p99 {added_99:.2f} ms")
        if shutil.which("ab"):
            # Rounds, taken in turn: on a small machine one round swings with where the
            # scheduler puts ab, the router and the model server; the median is steadier.
            rounds: dict[str, list[float]] = {"direct": [], "router": []}
            for _ in range(args.rounds):
                rounds["direct"].append(ab(direct, "", args.throughput, 16))
                rounds["router"].append(ab(via, key, args.throughput, 16))
            straight = statistics.median(rounds["direct"])
            routed = statistics.median(rounds["router"])
            print(
                f"  throughput, 16 at a time, median of {args.rounds} rounds: direct "
                f"{straight:,.0f}/s, through the router {routed:,.0f}/s "
                f"({routed / straight:.0%} of direct; rounds "
                f"{', '.join(f'{r / d:.0%}' for d, r in zip(*rounds.values(), strict=True))})"
            )
        else:
            print("  throughput: skipped (needs ApacheBench: apt-get install apache2-utils)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--throughput", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args())
