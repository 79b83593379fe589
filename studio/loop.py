"""The event loop the studio's long-running processes run on: uvloop where it is
installed (uvicorn[standard] brings it on Linux and macOS), else asyncio's own.

uvicorn picks uvloop only when it makes the loop itself; `serve`, `runrouter` and
`runcontroller` make theirs (to run the controller and the runner beside the server), so
they ask for it here.

Before the loop starts, what the process has loaded (Django, the apps, every view) is
frozen out of the garbage collector's reach: it lives as long as the process, and each
collection no longer walks those hundreds of thousands of objects again. The router
spends a fifth less CPU per request with it (bench/router.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # Windows, or a build without it
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on the studio's loop (the application imported before: frozen too)."""
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=factory()) as runner:
        return runner.run(main)
