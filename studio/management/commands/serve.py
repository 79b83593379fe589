"""Serve HTTP and websockets; in embedded mode, run the job controller in the same loop.

The in-memory channel layer lives in one process and one event loop, so the embedded
controller must share the web server's loop for its log lines to reach the sockets.
"""

import asyncio
import contextlib
import signal
from importlib import import_module
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from studio import loop
from studio.env import env_int, env_str
from studio.logging import uvicorn_log_config


class Command(BaseCommand):
    help = "Run the studio (HTTP + websockets, and the controller unless in server mode)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=env_str("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=env_int("PORT", 8000))
        parser.add_argument(
            "--workers",
            type=int,
            default=env_int("WEB_WORKERS", 1),
            help="Web worker processes (server mode only).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        embedded = settings.STUDIO_EMBEDDED_CONTROLLER
        if not settings.STUDIO_PUBLIC_URL:
            # Where local jobs reach this studio (MLFLOW_TRACKING_URI): its own address.
            host = options["host"] if options["host"] not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
            settings.STUDIO_PUBLIC_URL = f"http://{host}:{options['port']}"
        if options["workers"] > 1:
            if embedded:
                self.stderr.write("--workers needs server mode (REDIS_URL, DATABASE_URL).")
                return
            uvicorn.run(
                "studio.asgi:application",
                host=options["host"],
                port=options["port"],
                workers=options["workers"],
                lifespan="off",
                log_config=uvicorn_log_config(settings.LOG_LEVEL),
                access_log=settings.STUDIO_ACCESS_LOG,
            )
            return
        self.stdout.write(
            f"KubeStudio on http://{options['host']}:{options['port']}/ "
            f"({'embedded controller' if embedded else 'server mode: run manage.py runcontroller'})"
        )
        import_module("studio.asgi")  # loaded before the loop: frozen out of the GC's reach
        loop.run(self.serve(options["host"], options["port"], embedded))

    async def serve(self, host: str, port: int, embedded: bool) -> None:
        config = uvicorn.Config(
            "studio.asgi:application",
            host=host,
            port=port,
            lifespan="off",
            log_config=uvicorn_log_config(settings.LOG_LEVEL),
            access_log=settings.STUDIO_ACCESS_LOG,
        )
        server = uvicorn.Server(config)
        # uvicorn stops on SIGTERM/SIGINT, then raises the signal again for the handler it
        # found: this one, so the controller and the deployment runner still stop cleanly
        # below (leases released, model servers stopped) and the process ends with 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        stop = asyncio.Event()
        tasks = []
        if embedded:
            from endpoints.runner import Runner
            from jobs.controller import Controller

            tasks.append(asyncio.create_task(Controller(name="embedded").run(stop)))
            tasks.append(asyncio.create_task(Runner().run(stop)))
        try:
            await server.serve()
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            from endpoints.router import ROUTER
            from endpoints.traffic import RECORDER

            await ROUTER.close()
            await asyncio.to_thread(RECORDER.stop)
