"""A launcher on a host that shares no disk with the studio (as in a pod) gets the job's
uploads and publishes its outputs over HTTP, with a token good for that job only."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from compute import launcher
from compute.backends import artifacts
from compute.backends.remote import launch_file
from jobs import outputs, services, tokens
from jobs.launch import launch_spec
from jobs.models import Job
from tests.conftest import code_archive, token_for

pytestmark = pytest.mark.django_db(transaction=True)

JOB = (
    "command: >-\n"
    "  python main.py ${{inputs.words}} > ${{outputs.model}}/m.txt &&\n"
    "  mkdir -p outputs/a/b && echo deep > outputs/a/b/c.txt\n"
    "code: src\n"
    "inputs: {words: {type: uri_file, path: ./words.txt}}\n"
    "outputs: {model: {type: uri_folder}}\n"
)


@pytest.fixture
def job(workspace, people, settings) -> Job:
    # No controller here takes it: the launcher below runs it, as a pod would.
    settings.STUDIO_MAX_RUNNING_JOBS = 0
    uploads = {
        "code": services.Upload(code_archive(), "code.tar.gz"),
        "inputs.words": services.Upload(io.BytesIO(b"far away\n"), "words.txt"),
    }
    return services.submit_yaml(workspace, people.contributor, JOB, uploads)


def test_a_launcher_elsewhere_fetches_uploads_and_publishes_outputs(job, live_studio, tmp_path):
    pod = tmp_path / "pod"
    pod.mkdir()
    (pod / "launch.json").write_text(
        json.dumps(launch_file(launch_spec(job), str(pod), live_studio.url))
    )
    subprocess.run(
        [sys.executable, launcher.__file__, str(pod / "launch.json")], check=True, timeout=60
    )
    state = json.loads((pod / "state.json").read_text())
    assert state["phase"] == "Completed", state
    published = artifacts.published_outputs(job.pk, outputs.output_names(job))
    assert [(o["output"], o["path"], o["size"]) for o in published] == [
        ("default", "a/b/c.txt", 5),
        ("model", "m.txt", 9),
    ]
    assert sorted(o["artifact"] for o in state["outputs"]) == [o["artifact"] for o in published]
    job.outputs = published
    with outputs.open_file(job, "model", "m.txt") as f:
        assert f.read() == b"FAR AWAY\n"


def test_a_job_token_opens_only_its_own_jobs_files_and_only_while_it_runs(
    job, workspace, people, client
):
    token = tokens.token_for(job)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert b"".join(client.get("/api/v1/job-io/uploads/inputs.words", **auth)) == b"far away\n"
    missing = client.get("/api/v1/job-io/uploads/inputs.nope", **auth)
    assert missing.status_code == 404

    put = client.put(
        "/api/v1/job-io/outputs/model/x.bin", b"\x00" * 3, "application/octet-stream", **auth
    )
    assert put.status_code == 201 and put.json()["size"] == 3
    escape = client.put(
        "/api/v1/job-io/outputs/model/../../x", b"1", "application/octet-stream", **auth
    )
    assert escape.status_code in (400, 404)
    bad_output = client.put(
        "/api/v1/job-io/outputs/nope/x", b"1", "application/octet-stream", **auth
    )
    assert bad_output.status_code == 400 and "nope" in bad_output.json()["errors"][0]["message"]

    # A user's token is not a job's, a forged one is refused, and another job's token
    # opens that job only.
    user = {"HTTP_AUTHORIZATION": f"Bearer {token_for(people.contributor)}"}
    assert client.get("/api/v1/job-io/uploads/code", **user).status_code in (401, 403)
    forged = {"HTTP_AUTHORIZATION": f"Bearer {tokens.PREFIX}{job.pk}:forged"}
    assert client.get("/api/v1/job-io/uploads/code", **forged).status_code == 401
    other = services.submit_yaml(workspace, people.contributor, "command: echo\n", {})
    theirs = {"HTTP_AUTHORIZATION": f"Bearer {tokens.token_for(other)}"}
    assert client.get("/api/v1/job-io/uploads/code", **theirs).status_code == 404

    Job.objects.filter(pk=job.pk).update(status="Completed")
    ended = client.get("/api/v1/job-io/uploads/code", **auth)
    assert ended.status_code == 401 and "ended" in ended.json()["detail"]
