"""One backend per kind of compute; the controller asks `backend_for(kind)` and never more."""

from compute.backends.base import ComputeBackend, LaunchSpec, LogRecord, Observation
from compute.models import ComputeKind


def backend_for(kind: str) -> ComputeBackend:
    if kind == ComputeKind.LOCAL:
        from compute.backends.local import LocalBackend

        return LocalBackend()
    raise LookupError(f"No backend for compute kind {kind!r}.")


__all__ = ["ComputeBackend", "LaunchSpec", "LogRecord", "Observation", "backend_for"]
