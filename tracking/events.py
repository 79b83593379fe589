"""Tracking's channel group and message: a run's metrics or status changed. Sent with
studio.events.publish after commit, so a page that reloads its charts sees the change."""

from studio.events import Message


def run_group(run_id: str) -> str:
    return f"run-{run_id}"


def run_changed(run_id: str, keys: set[str], status: str = "") -> Message:
    """Points of `keys` were logged (or the run's status became `status`)."""
    return (run_group(run_id), {"type": "run.changed", "keys": sorted(keys), "status": status})
