"""Faults a healthy API server does not give on demand, in front of the real one: a small
HTTP proxy that forwards each request (its bearer token too) to the API server, and on a
test's word answers the next matching request with an error (429 with Retry-After, 500,
403), drops the watches it is streaming, or answers the next resumed watch with the
`410 Expired` event a server sends when the resourceVersion is older than its history.
It listens on plain HTTP on loopback: a client certificate cannot pass through it, so the
studio is given a token (RealKube.through)."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
REASONS = {403: "Forbidden", 429: "TooManyRequests", 500: "InternalError", 410: "Expired"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    message: str
    times: int | None  # None: every time


def status_body(code: int, message: str) -> bytes:
    return json.dumps({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": REASONS.get(code, ""), "code": code,
    }).encode()  # fmt: skip


class FaultProxy:
    def __init__(self, upstream: str, ca: str) -> None:
        found = urlsplit(upstream)
        self.host, self.port = found.hostname or "127.0.0.1", found.port or 443
        self.tls = ssl.create_default_context(cafile=ca)
        self.requests: list[tuple[str, str]] = []  # (method, path) of each, as received
        self._faults: list[Fault] = []
        self._streams: set[tuple[socket.socket, socket.socket]] = set()  # (client, upstream)
        self._expire = False
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.interrupt_watches()
        self.server.shutdown()
        self.server.server_close()

    # -- what a test asks for ---------------------------------------------------------------
    def fail_next(
        self, method: str, path: str, status: int, message: str = "", times: int | None = 1
    ) -> None:
        """The next `times` requests matching (method, path regex) answer `status`."""
        said = message or f"injected {status} {REASONS.get(status, '')}".rstrip()
        with self._lock:
            self._faults.append(Fault(method, re.compile(path), status, said, times))

    def interrupt_watches(self, expire: bool = False) -> None:
        """Drop every watch being streamed; with `expire`, the next watch resumed from a
        resourceVersion is told it is too old (410), as after a compaction."""
        with self._lock:
            self._expire = self._expire or expire
            streams, self._streams = self._streams, set()
        for pair in streams:
            for sock in pair:
                with contextlib.suppress(OSError):  # already gone
                    sock.shutdown(socket.SHUT_RDWR)

    # -- serving ----------------------------------------------------------------------------
    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path.search(path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _expired(self, query: str) -> bool:
        with self._lock:
            if self._expire and "resourceVersion=" in query:
                self._expire = False
                return True
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the tests read `requests`, not a log

            def _forward(self) -> None:
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests.append((self.command, path))
                watching = bool(re.search(r"(^|&)watch=(true|1)", query))
                fault = proxy._fault_for(self.command, path)
                if fault is not None:
                    headers = {"Retry-After": "0"} if fault.status == 429 else {}
                    return self._answer(fault.status, status_body(fault.status, fault.message),
                                        headers)  # fmt: skip
                if watching and proxy._expired(query):
                    event = {"type": "ERROR", "object": json.loads(status_body(
                        410, "too old resource version: (injected)"))}  # fmt: skip
                    return self._answer(200, json.dumps(event).encode() + b"\n")
                upstream = http.client.HTTPSConnection(proxy.host, proxy.port, context=proxy.tls)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in HOP_BY_HOP}  # fmt: skip
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    if answer.getheader("Transfer-Encoding", "") != "chunked":
                        data = answer.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    self._stream(answer, upstream.sock if watching else None)
                finally:
                    upstream.close()

            def _stream(self, answer: http.client.HTTPResponse, watch: Any) -> None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pair = (self.connection, watch)
                if watch is not None:
                    with proxy._lock:
                        proxy._streams.add(pair)
                try:
                    while chunk := answer.read1(65536):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True  # dropped by interrupt_watches
                finally:
                    with proxy._lock:
                        proxy._streams.discard(pair)

            def _answer(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
