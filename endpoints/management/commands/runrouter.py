"""The inference router as a process of its own, for scale: scoring requests go to
/api/v1/endpoint/<name>/score here instead of the studio's own address (set
STUDIO_INFERENCE_URL to this one, so endpoints show it as their scoring URI). Stops
cleanly on SIGTERM/SIGINT."""

import asyncio
import signal
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from endpoints.router import ROUTER
from endpoints.traffic import RECORDER
from studio.logging import uvicorn_log_config


class Command(BaseCommand):
    help = "Serve the inference router alone (/api/v1/endpoint/<name>/score)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--workers", type=int, default=1, help="Processes (each keeps its own counts)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"router on http://{options['host']}:{options['port']}")
        config = {
            "host": options["host"],
            "port": options["port"],
            "lifespan": "off",
            "log_config": uvicorn_log_config(settings.LOG_LEVEL),
            "access_log": settings.STUDIO_ACCESS_LOG,
        }
        if options["workers"] > 1:
            uvicorn.run("endpoints.asgi:application", workers=options["workers"], **config)
        else:
            asyncio.run(self.serve(config))

    async def serve(self, config: dict[str, Any]) -> None:
        # uvicorn stops on SIGTERM/SIGINT, then raises the signal again for the handler it
        # found: this one, so the process ends with 0 after a clean stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        server = uvicorn.Server(uvicorn.Config("endpoints.asgi:application", **config))
        try:
            await server.serve()
        finally:
            await ROUTER.close()
            await asyncio.to_thread(RECORDER.stop)
