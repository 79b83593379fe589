"""The inference router as a process of its own, for scale: scoring requests go to
/api/v1/endpoint/<name>/score here instead of the studio's own address (set
STUDIO_INFERENCE_URL to this one, so endpoints show it as their scoring URI). Stops
cleanly on SIGTERM/SIGINT.

With --studio it is the router inside a cluster (the extension's `kstudio-router`
Deployment): routing tables come from that studio's API with the cluster's router token
(KSTUDIO_ROUTER_TOKEN), not from a database, and requests go to the deployments'
Services directly.
"""

import asyncio
import os
import signal
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from endpoints import remote
from endpoints.router import ROUTER
from endpoints.traffic import RECORDER
from studio import loop
from studio.logging import uvicorn_log_config


class Command(BaseCommand):
    help = "Serve the inference router alone (/api/v1/endpoint/<name>/score)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--workers", type=int, default=1, help="Processes (each keeps its own counts)."
        )
        parser.add_argument(
            "--studio",
            default="",
            help="Route inside a cluster: read routing from this studio (the token in "
            "KSTUDIO_ROUTER_TOKEN).",
        )
        parser.add_argument("--certfile", default="", help="Serve HTTPS with this certificate.")
        parser.add_argument("--keyfile", default="", help="... and this private key.")
        parser.add_argument(
            "--self-signed",
            default="",
            metavar="NAME",
            help="Serve HTTPS with a certificate for NAME made now (when no --certfile).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config: dict[str, Any] = {
            "host": options["host"],
            "port": options["port"],
            "lifespan": "off",
            "log_config": uvicorn_log_config(settings.LOG_LEVEL),
            "access_log": settings.STUDIO_ACCESS_LOG,
        }
        if options["studio"]:
            if options["workers"] > 1:
                raise CommandError("--studio serves one process; run more replicas instead.")
            token = os.environ.get("KSTUDIO_ROUTER_TOKEN", "")
            if not token:
                raise CommandError(
                    "--studio needs the cluster's router token in KSTUDIO_ROUTER_TOKEN."
                )
            remote.use(remote.Studio(options["studio"], token))
        certfile, keyfile = options["certfile"], options["keyfile"]
        if options["self_signed"] and not certfile:
            folder = Path(tempfile.mkdtemp(prefix="kstudio-router-"))
            certfile, keyfile = remote.self_signed(options["self_signed"], folder)
        if certfile:
            config.update(ssl_certfile=certfile, ssl_keyfile=keyfile or None)
        scheme = "https" if certfile else "http"
        self.stdout.write(f"router on {scheme}://{options['host']}:{options['port']}")
        if options["workers"] > 1:
            uvicorn.run("endpoints.asgi:application", workers=options["workers"], **config)
        else:
            import_module("endpoints.asgi")  # loaded before the loop: frozen out of the GC's reach
            loop.run(self.serve(config))

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
