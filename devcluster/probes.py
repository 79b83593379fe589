"""A container's startup, readiness and liveness probes (httpGet, tcpSocket, exec), sent
as the kubelet sends them: after initialDelaySeconds, every periodSeconds, each within
timeoutSeconds; failureThreshold failures in a row make a liveness probe restart the
container, successThreshold successes make it ready."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devcluster.pods import Container, Instance, Pod


class Prober:
    def __init__(self, pod: Pod, container: Container, instance: Instance) -> None:
        self.pod, self.container, self.instance = pod, container, instance
        self.done = threading.Event()

    def start(self) -> None:
        spec = self.container.spec
        if not spec.get("readinessProbe") and not spec.get("startupProbe"):
            self.container.ready = True  # no readiness probe: ready once running
            self.pod.publish()
        threading.Thread(target=self._run, daemon=True, name=f"probe {self.pod.name}").start()

    def stop(self) -> None:
        self.done.set()

    def _run(self) -> None:
        spec = self.container.spec
        startup = spec.get("startupProbe")
        if startup and not self._until(startup, succeed=True):
            return self._restart()
        if startup and not spec.get("readinessProbe"):
            self.container.ready = True
            self.pod.publish()
        readiness, liveness = spec.get("readinessProbe"), spec.get("livenessProbe")
        threads = []
        if readiness:
            threads.append(threading.Thread(target=self._readiness, args=(readiness,), daemon=True))
        if liveness:
            threads.append(threading.Thread(target=self._liveness, args=(liveness,), daemon=True))
        for thread in threads:
            thread.start()

    def _readiness(self, probe: dict[str, Any]) -> None:
        if self.done.wait(float(probe.get("initialDelaySeconds", 0))):
            return
        failures = successes = 0
        while not self.done.is_set():
            if self._once(probe):
                successes, failures = successes + 1, 0
                if not self.container.ready and successes >= int(probe.get("successThreshold", 1)):
                    self._ready(True)
            else:
                successes, failures = 0, failures + 1
                if self.container.ready and failures >= int(probe.get("failureThreshold", 3)):
                    self._ready(False)
            if self.done.wait(float(probe.get("periodSeconds", 10))):
                return

    def _liveness(self, probe: dict[str, Any]) -> None:
        if self.done.wait(float(probe.get("initialDelaySeconds", 0))):
            return
        if not self._until(probe, succeed=False):
            self._restart()

    def _until(self, probe: dict[str, Any], succeed: bool) -> bool:
        """succeed: until a success (False after failureThreshold failures); else, until
        failureThreshold failures in a row (False then), or the container ends (True)."""
        failures = 0
        while not self.done.is_set():
            if self._once(probe):
                failures = 0
                if succeed:
                    return True
            else:
                failures += 1
                if failures >= int(probe.get("failureThreshold", 3)):
                    return False
            if self.done.wait(float(probe.get("periodSeconds", 10))):
                return True
        return True

    def _ready(self, ready: bool) -> None:
        if self.done.is_set():
            return
        self.container.ready = ready
        self.pod.publish()

    def _restart(self) -> None:
        """A failed liveness (or startup) probe: the container is killed, and its
        restartPolicy decides what follows."""
        if not self.done.is_set():
            self.pod.signal(self.container, 9)

    def _once(self, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        address = self.pod.node.kubelet.addresses.host(self.pod.address)
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = self.pod.port(get["port"])
                connection = (
                    # The kubelet checks no certificate in an HTTPS probe.
                    http.client.HTTPSConnection(
                        address,
                        port,
                        timeout=timeout,
                        context=ssl._create_unverified_context(),  # noqa: S323
                    )
                    if get.get("scheme") == "HTTPS"
                    else http.client.HTTPConnection(address, port, timeout=timeout)
                )
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    connection.request("GET", get.get("path", "/"), headers=headers)
                    return 200 <= connection.getresponse().status < 400
                finally:
                    connection.close()
            if "tcpSocket" in probe:
                port = self.pod.port(probe["tcpSocket"]["port"])
                socket.create_connection((address, port), timeout=timeout).close()
                return True
            if "exec" in probe:
                process = self.pod.exec(self.container, probe["exec"]["command"])
                try:
                    return process.wait(timeout) == 0
                except subprocess.TimeoutExpired:
                    process.kill()
                    return False
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return False
