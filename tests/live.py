"""The studio as `manage.py serve` runs it (uvicorn, the embedded controller and the
deployments' runner), in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import uvicorn

from studio import loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveStudio:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.server: uvicorn.Server | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="live-studio", daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.failed:
            raise RuntimeError(f"live studio did not start: {self.failed}")

    def _run(self) -> None:
        try:
            loop.run(self._main())
        except BaseException as exc:
            self.failed = exc
            self.ready.set()

    async def _main(self) -> None:
        from endpoints.runner import Runner
        from jobs.controller import Controller
        from studio.asgi import application

        config = uvicorn.Config(
            application, host=self.host, port=self.port, lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        stop = asyncio.Event()
        controller = asyncio.create_task(Controller(name="live").run(stop))
        runner = asyncio.create_task(Runner().run(stop))
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.01)
        self.ready.set()
        try:
            await serving
        finally:
            stop.set()
            for task in (controller, runner):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            from endpoints.router import ROUTER
            from endpoints.traffic import RECORDER

            await ROUTER.close()
            await asyncio.to_thread(RECORDER.stop)

    def close(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)
