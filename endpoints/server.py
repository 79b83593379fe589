"""The model server: what runs a deployment's scoring script, as Azure's inference server
does (Azure's own is not open source; this follows its documented contract).

    python server.py --port 5001

- The entry script (`AZUREML_ENTRY_SCRIPT`, under `AML_APP_ROOT`) defines `init()`, called
  once per worker process before it serves, and `run(raw_data)`, called per request with
  the body as text; what `run` returns is sent back as JSON (text and bytes as they are).
- `AZUREML_MODEL_DIR` is the folder that holds the model's folder (or file).
- Without an entry script, an MLflow model (an `MLmodel` file) is served by
  `mlflow.pyfunc`, which must then be importable: `{"input_data": ...}` (Azure's form),
  or MLflow's own `inputs`, `instances`, `dataframe_split`, `dataframe_records`.
- Routes: `POST /score`, `GET /` (liveness: 200 once `init()` is done), `GET /swagger.json`.
- `WORKER_COUNT` processes share the port; each runs one request at a time, as Azure's do.

When the script cannot start, the last line on stderr is `KSTUDIO_ERROR <code>: <why>`
with Azure's code (UserScriptImportError, UserScriptFunctionNotFound,
UserScriptInitFailed, after the traceback), and the process exits 3.

Standard library only, Python 3.8 and later: it runs in the deployment's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any, Callable

MAX_BODY = 100 * 1024 * 1024  # Azure's limit on a request to an endpoint
START_FAILED = 3


class StartFailed(Exception):
    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


def _model_dir() -> str:
    return os.environ.get("AZUREML_MODEL_DIR", "")


def load_script() -> Callable[[str], Any]:
    """The entry script's `run`, after its `init()`: or the MLflow model's scorer."""
    root = os.environ.get("AML_APP_ROOT", os.getcwd())
    entry = os.environ.get("AZUREML_ENTRY_SCRIPT", "")
    if not entry:
        return _mlflow_scorer()
    path = os.path.join(root, entry)
    sys.path.insert(0, root)
    try:
        spec = importlib.util.spec_from_file_location("score", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["score"] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # the user's code: anything at all can come out of it
        traceback.print_exc()
        raise StartFailed("UserScriptImportError", f"importing {entry} failed: {exc!r}") from exc
    for name in ("init", "run"):
        if not callable(getattr(module, name, None)):
            raise StartFailed("UserScriptFunctionNotFound", f"{entry} defines no {name}() function")
    try:
        module.init()
    except BaseException as exc:
        traceback.print_exc()
        raise StartFailed("UserScriptInitFailed", f"init() failed: {exc!r}") from exc
    return module.run


def _mlflow_folder() -> str:
    """The folder that holds MLmodel: the model's own folder under AZUREML_MODEL_DIR."""
    base = _model_dir()
    for folder, _dirs, files in os.walk(base):
        if "MLmodel" in files:
            return folder
    raise StartFailed(
        "UserScriptFunctionNotFound",
        "no scoring script was given and the model has no MLmodel file: give "
        "code_configuration.scoring_script, or deploy an mlflow_model",
    )


def _mlflow_scorer() -> Callable[[str], Any]:
    folder = _mlflow_folder()
    try:
        import mlflow.pyfunc
    except ImportError as exc:
        raise StartFailed(
            "UserScriptImportError",
            "serving an MLflow model needs mlflow in the deployment's environment",
        ) from exc
    try:
        model = mlflow.pyfunc.load_model(folder)
    except BaseException as exc:
        traceback.print_exc()
        raise StartFailed(
            "UserScriptInitFailed", f"loading the MLflow model failed: {exc!r}"
        ) from exc

    def run(raw_data: str) -> Any:
        body = json.loads(raw_data)
        data = body
        if isinstance(body, dict):
            for key in ("input_data", "inputs", "instances"):
                if key in body:
                    data = body[key]
                    break
            else:
                if "dataframe_split" in body or "dataframe_records" in body:
                    import pandas

                    split = body.get("dataframe_split")
                    data = (
                        pandas.DataFrame(**split)
                        if split
                        else pandas.DataFrame(body["dataframe_records"])
                    )
        if isinstance(data, dict) and "data" in data:  # {"columns": [...], "data": [...]}
            import pandas

            data = pandas.DataFrame(data["data"], columns=data.get("columns"))
        elif isinstance(data, list):
            try:
                import numpy

                data = numpy.asarray(data)
            except ImportError:
                pass
        predictions = model.predict(data)
        return predictions.tolist() if hasattr(predictions, "tolist") else predictions

    return run


SWAGGER = {
    "swagger": "2.0",
    "info": {"title": "Model server", "version": "1.0"},
    "schemes": ["http"],
    "paths": {
        "/": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Healthy"}}}},
        "/score": {
            "post": {
                "summary": "Score",
                "consumes": ["application/json"],
                "produces": ["application/json"],
                "parameters": [{"in": "body", "name": "body", "schema": {"type": "object"}}],
                "responses": {
                    "200": {"description": "What run() returned"},
                    "500": {"description": "run() raised"},
                },
            }
        },
    },
}


def make_handler(run: Callable[[str], Any], key: str = "") -> type[BaseHTTPRequestHandler]:
    """`key`: what a caller must show in X-Kstudio-Server-Key for /score and the swagger
    (the studio's router does); the health check at / answers anyone, as probes need."""
    lock = threading.Lock()  # one request at a time per worker, as Azure's workers do
    wanted = key.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "kstudio-model-server"
        # Buffered: an answer's headers and body leave in one write when the request is
        # done (handle_one_request flushes), not two.
        wbufsize = -1

        def setup(self) -> None:
            super().setup()
            # A large body still leaves in pieces: without this, Nagle's algorithm and the
            # client's delayed ACK could hold the last one back some 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

        def handle_one_request(self) -> None:
            # Between requests a kept-alive connection is idle: a stopping server ends it
            # (rather than wait for the client to), and takes no new request on it.
            server: Any = self.server
            if not server.waiting(self.connection):
                self.close_connection = True
                return
            super().handle_one_request()

        def parse_request(self) -> bool:
            server: Any = self.server
            server.busy(self.connection)  # a request came: it is answered, stopping or not
            return super().parse_request()

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if self.request_version == "HTTP/1.0" and not self.close_connection:
                # It asked to keep the connection: say it is kept, or it waits for a close.
                self.send_header("Connection", "keep-alive")
            self.end_headers()
            self.wfile.write(body)

        def _refused(self) -> bool:
            """Refuse (401) a caller without the key: only the router may score."""
            shown = (self.headers.get("X-Kstudio-Server-Key") or "").encode()
            if not wanted or hmac.compare_digest(shown, wanted):
                return False
            self.close_connection = True  # and its body is never read
            self._send(401, b'{"error": "this model server answers the studio\'s router only"}')
            return True

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(200, b"Healthy", "text/plain")
            elif self._refused():
                return
            elif self.path == "/swagger.json":
                self._send(200, json.dumps(SWAGGER).encode())
            else:
                self._send(404, b'{"error": "no such route"}')

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/score":
                self._send(404, b'{"error": "no such route"}')
                return
            if self._refused():
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, b'{"error": "the request is larger than 100 MB"}')
                return
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            try:
                with lock:
                    result = run(raw)
            except BaseException as exc:  # the user's code: report it, keep serving
                traceback.print_exc()
                self._send(500, json.dumps({"error": f"run() raised {exc!r}"}).encode())
                return
            if isinstance(result, bytes):
                self._send(200, result, "application/octet-stream")
            elif isinstance(result, str):
                self._send(200, result.encode(), "text/plain; charset=utf-8")
            else:
                try:
                    body = json.dumps(result).encode()
                except (TypeError, ValueError) as exc:
                    self._send(
                        500, json.dumps({"error": f"run()'s answer is not JSON: {exc}"}).encode()
                    )
                    return
                self._send(200, body)

    return Handler


class Server(ThreadingMixIn, HTTPServer):
    # On SIGTERM, requests under way finish (server_close joins their threads), and idle
    # kept-alive connections are ended (`drop_idle`).
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle: set[socket.socket] = set()
        self.idle_lock = threading.Lock()
        self.stopping = False

    def waiting(self, connection: socket.socket) -> bool:
        """The connection waits for its next request; False once the server stops."""
        with self.idle_lock:
            if self.stopping:
                return False
            self.idle.add(connection)
            return True

    def busy(self, connection: socket.socket) -> None:
        with self.idle_lock:
            self.idle.discard(connection)

    def drop_idle(self) -> None:
        """No more requests: connections waiting for one see their end (a request that
        arrived meanwhile is still read and answered: only reading is shut)."""
        with self.idle_lock:
            self.stopping = True
            for connection in self.idle:
                with contextlib.suppress(OSError):  # closed by its client meanwhile
                    connection.shutdown(socket.SHUT_RD)

    def get_request(self) -> tuple[socket.socket, Any]:
        # The listening socket is non-blocking: the worker processes share it, and the
        # ones that lose the race for a connection must go back to their loop (and see a
        # shutdown) instead of waiting in accept() for the next one.
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address


def serve(sock: socket.socket, run: Callable[[str], Any], key: str = "") -> None:
    server = Server(sock.getsockname()[:2], make_handler(run, key), bind_and_activate=False)
    server.socket = sock
    sock.setblocking(False)

    def stop() -> None:
        server.shutdown()
        server.drop_idle()

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop).start())
    server.serve_forever(poll_interval=0.2)
    server.server_close()


def stop_workers(children: list[int], grace: float = 10.0) -> None:
    """The other worker processes stopped (they finish their requests first), and waited
    for: when the first one has ended, the whole server has."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in children:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a scoring script.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5001")))
    args = parser.parse_args(argv)
    workers = max(1, int(os.environ.get("WORKER_COUNT", "1") or 1))
    # Out of the environment before the scoring script loads: what it starts never sees it.
    key = os.environ.pop("KSTUDIO_SERVER_KEY", "")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    children: list[int] = []
    for _ in range(workers - 1):  # the others share the socket: the kernel spreads requests
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    try:
        run = load_script()
    except StartFailed as exc:
        sys.stderr.write(f"KSTUDIO_ERROR {exc.code}: {exc}\n")
        sys.stderr.flush()
        stop_workers(children)
        return START_FAILED
    print(f"model server listening on {args.host}:{args.port}", flush=True)
    serve(sock, run, key)
    stop_workers(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
