"""The model server, as a deployment runs it: a real scoring script over a real
scikit-learn model, Azure's contract (init/run, AZUREML_MODEL_DIR, routes), MLflow models
without a script, and the reasons it gives when a script cannot start."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from endpoints import server
from tests.conftest import wait_until
from tests.test_launcher import INTERPRETERS

# As azureml-examples' online/model-1/onlinescoring/score.py reads its model.
SCORE = """
import json, logging, os, pickle

def init():
    global model
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model", "model.pkl")
    with open(path, "rb") as f:
        model = pickle.load(f)
    logging.info("Init complete")

def run(raw_data):
    data = json.loads(raw_data)["data"]
    if data == "boom":
        raise ValueError("no such thing as boom")
    return model.predict(data).tolist()
"""


def fitted(folder: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], [0, 1, 0, 1])
    (folder / "model").mkdir(parents=True)
    with open(folder / "model" / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process, self.url = process, url


def start(tmp_path: Path, script: str | None, model_dir: Path, python: str = sys.executable,
          **env: str) -> Running:  # fmt: skip
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    entry = {}
    if script is not None:
        (code / "score.py").write_text(script)
        entry = {"AZUREML_ENTRY_SCRIPT": "score.py"}
    port = free_port()
    process = subprocess.Popen(
        [python, server.__file__, "--port", str(port)],
        env={**os.environ, "AML_APP_ROOT": str(code), "AZUREML_MODEL_DIR": str(model_dir),
             **entry, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return Running(process, f"http://127.0.0.1:{port}")


def ready(running: Running) -> bool:
    if running.process.poll() is not None:
        raise AssertionError(running.process.stderr.read() if running.process.stderr else "")
    try:
        return httpx.get(running.url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def stop():
    started: list[Running] = []
    yield started.append
    for running in started:
        running.process.terminate()
        running.process.wait(10)


def test_a_scoring_script_serves_a_scikit_learn_model_as_azures_server_does(tmp_path, stop):
    running = start(tmp_path, SCORE, fitted(tmp_path / "models"), WORKER_COUNT="2")
    stop(running)
    wait_until(lambda: ready(running), 30, "the model server to start")
    scored = httpx.post(running.url + "/score", json={"data": [[0.0, 0.1], [1.0, 0.9]]})
    assert (scored.status_code, scored.json()) == (200, [0, 1])
    swagger = httpx.get(running.url + "/swagger.json").json()
    assert "/score" in swagger["paths"]
    failed = httpx.post(running.url + "/score", json={"data": "boom"})
    assert failed.status_code == 500 and "no such thing as boom" in failed.json()["error"]
    # It keeps serving after the user's code raised.
    assert httpx.post(running.url + "/score", json={"data": [[1.0, 1.0]]}).json() == [1]


def test_answers_leave_in_one_write_and_an_http_1_0_client_keeps_its_connection(tmp_path, stop):
    """Headers and body in one segment (one read gets the whole answer); an HTTP/1.0
    client that asks to keep the connection (ApacheBench -k) is told it is kept, and
    sends its next request on it."""
    running = start(tmp_path, SCORE, fitted(tmp_path / "models"))
    stop(running)
    wait_until(lambda: ready(running), 30, "the model server to start")
    body = b'{"data": [[1.0, 0.9]]}'
    request = (b"POST /score HTTP/1.0\r\nConnection: keep-alive\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s")  # fmt: skip
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        for _ in range(2):
            conn.sendall(request % (len(body), body))
            answer = conn.recv(65536)  # one write: all of it, in one segment
            head, _, content = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
            assert b"\r\nConnection: keep-alive" in head
            assert content == b"[1]"


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_server_runs_on_the_oldest_python_deployments_may_have(tmp_path, stop, python):
    script = "def init():\n    pass\n\ndef run(raw_data):\n    return {'echo': raw_data}\n"
    running = start(tmp_path, script, tmp_path, python=python)
    stop(running)
    wait_until(lambda: ready(running), 30, "the model server to start")
    assert httpx.post(running.url + "/score", content=b"hi").json() == {"echo": "hi"}


@pytest.mark.parametrize(
    ("script", "code", "detail"),
    [
        ("import no_such_module\n", "UserScriptImportError", "No module named 'no_such_module'"),
        ("def init():\n    pass\n", "UserScriptFunctionNotFound", "defines no run()"),
        ("def init():\n    raise RuntimeError('no weights')\n\ndef run(d):\n    return d\n",
         "UserScriptInitFailed", "RuntimeError: no weights"),
    ],
)  # fmt: skip
def test_a_script_that_cannot_start_says_why_with_azures_code(tmp_path, script, code, detail):
    running = start(tmp_path, script, tmp_path)
    assert running.process.wait(30) == server.START_FAILED
    stderr = running.process.stderr.read() if running.process.stderr else ""
    assert stderr.strip().splitlines()[-1].startswith(f"KSTUDIO_ERROR {code}: ")
    assert detail in stderr  # the traceback, for the deployment's log


def test_an_mlflow_model_needs_no_scoring_script(tmp_path, stop):
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], [0, 1, 0, 1])
    mlflow.sklearn.save_model(model, str(tmp_path / "models" / "clf"))
    running = start(tmp_path, None, tmp_path / "models")
    stop(running)
    wait_until(lambda: ready(running), 60, "the model server to start")
    scored = httpx.post(running.url + "/score", json={"input_data": [[0.0, 0.0], [1.0, 1.0]]})
    assert (scored.status_code, scored.json()) == (200, [0, 1])
    split = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 1.0]]}}
    assert httpx.post(running.url + "/score", json=split).json() == [1]


def test_without_a_script_or_an_mlflow_model_it_says_what_is_missing(tmp_path):
    running = start(tmp_path, None, tmp_path)
    assert running.process.wait(30) == server.START_FAILED
    stderr = running.process.stderr.read() if running.process.stderr else ""
    assert "KSTUDIO_ERROR UserScriptFunctionNotFound" in stderr
    assert json.dumps("scoring_script")[1:-1] in stderr
