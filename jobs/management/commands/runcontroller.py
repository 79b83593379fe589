"""The job controller as a process of its own (server mode). Stops cleanly on SIGTERM/SIGINT."""

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand

from endpoints.runner import Runner
from jobs.controller import Controller
from studio import loop


class Command(BaseCommand):
    help = "Hand queued jobs to their compute and follow them to the end."

    def handle(self, *args: Any, **options: Any) -> None:
        loop.run(self.run())

    async def run(self) -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, stop.set)
        controller = Controller()
        self.stdout.write(f"controller {controller.name} running; Ctrl-C or SIGTERM stops it")
        # The deployments of online endpoints on the local compute run beside the jobs.
        await asyncio.gather(controller.run(stop), Runner().run(stop))
