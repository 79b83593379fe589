"""Live log latency: from a line written by the job's process to its arrival at each of
100 websocket clients watching the same job. Also checks no line is lost or doubled.

The job's first line tells each client its socket is live (past connect and backlog);
the timed lines start once all 100 have it, so the figure is the live tail's, not the
cost of 100 connections arriving in the same instant.

    python bench/log_latency.py [--clients 100] [--lines 500] [--mode embedded|server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from common import percentile, studio

JOB = """command: |
  python - <<'PY'
  import os, time
  print("watchers, say when you are ready", flush=True)
  while not os.path.exists(os.environ["GO"]):
      time.sleep(0.01)
  for i in range({lines}):
      print(repr(time.time()), i, flush=True)
      time.sleep({interval})
  PY
environment_variables: {{GO: "{go}"}}
"""


async def watch(url: str, token: str, ready: asyncio.Event, counter: list[int], total: int):
    latencies, seqs = [], []
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_queue=None
    ) as ws:
        async for raw in ws:
            now = time.time()
            message = json.loads(raw)
            if message.get("type") == "end":
                return latencies, seqs, message["status"]
            seqs.append(message["seq"])
            if message["seq"] == 1:  # the "ready" line: this socket is live
                counter[0] += 1
                if counter[0] == total:
                    ready.set()
                continue
            latencies.append(now - float(message["line"].split()[0]))
    raise RuntimeError("socket closed before the end message")


async def main(args: argparse.Namespace) -> None:
    with studio(args.mode) as s, tempfile.TemporaryDirectory() as tmp:
        # The job runs as a uid of its own (under root): it must be able to see the file.
        os.chmod(tmp, 0o711)
        go = Path(tmp) / "go"
        with s.client() as http:
            job = http.post(
                "/api/v1/workspaces/demo/jobs/",
                json={"yaml": JOB.format(lines=args.lines, interval=args.interval, go=go)},
            ).json()
        ws_url = s.url.replace("http", "ws") + f"/ws/workspaces/demo/jobs/{job['name']}/logs/"
        ready, counter = asyncio.Event(), [0]
        watchers = [
            asyncio.create_task(watch(ws_url, s.token, ready, counter, args.clients))
            for _ in range(args.clients)
        ]
        await asyncio.wait_for(ready.wait(), 60)
        go.touch()
        results = await asyncio.gather(*watchers)
    expected = list(range(1, args.lines + 2))
    intact = all(seqs == expected for _lat, seqs, _status in results)
    latencies = [lat for lats, _seqs, _status in results for lat in lats]
    print(
        f"log latency ({args.mode}, {args.clients} clients, {args.lines} lines, "
        f"{len(latencies)} deliveries): p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"every client got every line once, in order: {intact}; "
        f"status {results[0][2]}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    asyncio.run(main(parser.parse_args()))
