"""Bodies sent chunked (no Content-Length) are read whole on every route, under the same
limits, and a body that ends early is never stored over a file. Over real HTTP: uvicorn,
a2wsgi and Django, as `make run` serves them."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import token_for
from tracking.models import Experiment, Run

pytestmark = pytest.mark.django_db(transaction=True)


def pieces(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def artifact(live_studio, people, workspace):
    run = Run.objects.create(experiment=Experiment.objects.create(workspace=workspace, name="e"))
    url = (f"{live_studio.url}/workspaces/demo/mlflow/api/2.0/mlflow-artifacts/artifacts/"
           f"{run.experiment_id}/{run.run_id}/artifacts/data.bin")  # fmt: skip
    headers = {"Authorization": f"Bearer {token_for(people.contributor)}"}
    return url, headers


def test_a_chunked_artifact_upload_is_stored_whole_over_the_old_file(artifact):
    url, headers = artifact
    assert httpx.put(url, content=b"old", headers=headers).status_code == 200
    data = bytes(range(256)) * 4000  # about 1 MB, in a thousand chunks
    sent = httpx.put(url, content=pieces(data), headers=headers)
    assert sent.status_code == 200, sent.text
    assert sent.request.headers.get("transfer-encoding") == "chunked"
    assert httpx.get(url, headers=headers).content == data


def test_a_chunked_body_past_the_limit_is_413_and_the_file_is_kept(artifact, settings):
    url, headers = artifact
    assert httpx.put(url, content=b"kept", headers=headers).status_code == 200
    settings.STUDIO_MAX_UPLOAD_BYTES = 10_000
    refused = httpx.put(url, content=pieces(b"x" * 20_000), headers=headers)
    assert refused.status_code == 413
    assert "STUDIO_MAX_UPLOAD_BYTES" in refused.text
    assert httpx.get(url, headers=headers).content == b"kept"


def test_an_upload_that_ends_before_its_content_length_replaces_nothing(artifact, live_studio):
    url, headers = artifact
    assert httpx.put(url, content=b"kept", headers=headers).status_code == 200
    path = url.removeprefix(live_studio.url)
    with socket.create_connection(("127.0.0.1", live_studio.port)) as raw:
        raw.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + b"partial"
        )
        raw.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        raw.settimeout(10)
        while raw.recv(65536):
            pass
    assert httpx.get(url, headers=headers).content == b"kept"


def test_a_chunked_json_body_is_read_on_the_rest_api(live_studio, people):
    headers = {"Authorization": f"Bearer {token_for(people.contributor)}",
               "Content-Type": "application/json"}  # fmt: skip
    body = b'{"command": "echo chunked", "display_name": "sent in pieces"}'
    made = httpx.post(f"{live_studio.url}/api/v1/workspaces/demo/jobs/validate/",
                      content=pieces(body, 7), headers=headers)  # fmt: skip
    assert made.status_code == 200, made.text
    assert "sent in pieces" in made.text
