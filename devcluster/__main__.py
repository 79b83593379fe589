"""`make cluster`: a dev cluster for a person, until Ctrl-C (or SIGTERM).

    python -m devcluster [--nodes N]

Prints one line `KUBECONFIG=<absolute path>` (an admin kubeconfig) once the nodes are
Ready; on SIGINT or SIGTERM stops everything and removes its temp folder."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from devcluster.cluster import DevCluster
from devcluster.controlplane import StartError


def main() -> int:
    parser = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nodes",
        type=int,
        default=int(os.environ.get("NODES") or 3),
        help="how many nodes (NODES=N in make)",
    )
    options = parser.parse_args()
    if options.nodes < 1:
        parser.error("--nodes: give 1 or more")
    ended = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: ended.set())
    try:
        cluster = DevCluster().start(nodes=options.nodes)
    except (StartError, TimeoutError) as exc:
        print(f"ERROR: the dev cluster did not start: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            f"{options.nodes} node(s) Ready in {cluster.ready_in:.1f} s; Ctrl-C stops the "
            f"cluster (logs: {cluster.folder})",
            file=sys.stderr,
        )
        print(f"KUBECONFIG={cluster.kubeconfig_path}", flush=True)
        ended.wait()
    finally:
        print("Stopping the dev cluster", file=sys.stderr)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
