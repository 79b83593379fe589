"""Backends are built per compute target, from its kind and its settings, and kept.

`backend_for(target)` is all the controller and services ask. The class for each kind is
named in STUDIO_COMPUTE_BACKENDS (local now; kubernetes with its issue) and built with
`from_target(target)`, where it reads the target's settings and credentials once. The
instance is kept until the target changes (its `updated_at`), so clients, connection
pools and watches live across calls instead of being rebuilt for each one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils.module_loading import import_string

from compute.backends.base import ComputeBackend, LaunchSpec, LogRecord, Observation

if TYPE_CHECKING:
    from compute.models import ComputeTarget

_built: dict[tuple[object, ...], ComputeBackend] = {}
_lock = threading.Lock()


def backend_class(kind: str) -> type[ComputeBackend]:
    path = settings.STUDIO_COMPUTE_BACKENDS.get(kind)
    if path is None:
        raise LookupError(f"No backend for compute kind {kind!r}.")
    cls: type[ComputeBackend] = import_string(path)
    return cls


def backend_for(target: ComputeTarget | None, kind: str | None = None) -> ComputeBackend:
    """The backend of a compute target; for a job whose target was deleted since, the
    kind's backend with no settings (enough to follow or clean up what already runs)."""
    if target is None:
        if kind is None:
            raise LookupError("A backend needs a compute target or a kind.")
        key: tuple[object, ...] = ("kind", kind)
    else:
        kind = target.kind
        key = ("target", target.pk, kind, target.updated_at)
    with _lock:
        backend = _built.get(key)
        if backend is None:
            cls = backend_class(kind)
            backend = cls.from_target(target) if target is not None else cls()
            if target is not None:  # an older build of the same target is let go
                for old in [k for k in _built if k[:2] == key[:2]]:
                    _built.pop(old).close()
            _built[key] = backend
        return backend


__all__ = [
    "ComputeBackend",
    "LaunchSpec",
    "LogRecord",
    "Observation",
    "backend_class",
    "backend_for",
]
