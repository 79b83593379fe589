"""The Kubernetes flows end to end, against the development cluster of `make cluster` in
`make test`, or against another real cluster (kind, k3s, a cloud one) when configured:

    STUDIO_E2E_KUBECONFIG=~/.kube/config      the cluster (its current context)
    STUDIO_E2E_STUDIO_URL=http://HOST:8765    how its pods reach the studio these tests run
    STUDIO_E2E_PORT=8765                      the port that studio listens on (all addresses)
    STUDIO_E2E_IMAGE=python:3.11-slim         an image with python3, pullable by the cluster
    STUDIO_E2E_MPI_IMAGE=...                  one with python3 and Open MPI (the MPI test)

    kind create cluster && STUDIO_E2E_KUBECONFIG=~/.kube/config \\
        STUDIO_E2E_STUDIO_URL=http://$(hostname -I | cut -d' ' -f1):8765 STUDIO_E2E_PORT=8765 \\
        .venv/bin/python -m pytest -m e2e_k8s

Without STUDIO_E2E_KUBECONFIG they run on the session's development cluster, whose pods
are processes of this host and reach the tests' studio on loopback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from compute import kube
from devcluster.network import NSS_WRAPPER
from jobs import services
from tests.conftest import code_archive, wait_until
from tests.live import LiveStudio

KUBECONFIG = os.environ.get("STUDIO_E2E_KUBECONFIG", "")
pytestmark = [pytest.mark.e2e_k8s, pytest.mark.django_db(transaction=True)]
MPI_IMAGE = os.environ.get("STUDIO_E2E_MPI_IMAGE", "" if KUBECONFIG else "python:3.11-slim")


@pytest.fixture
def admin_kubeconfig(request: pytest.FixtureRequest) -> str:
    """The configured cluster's kubeconfig, else the development cluster's admin's."""
    if KUBECONFIG:
        return Path(os.path.expanduser(KUBECONFIG)).read_text()
    return yaml.safe_dump(request.getfixturevalue("real_kube").kubeconfig())


@pytest.fixture
def studio_for_pods(request: pytest.FixtureRequest, transactional_db: None) -> Iterator[Any]:
    if not KUBECONFIG:  # the development cluster's pods are this host's processes
        yield request.getfixturevalue("live_studio")
        return
    studio = LiveStudio(host="0.0.0.0", port=int(os.environ.get("STUDIO_E2E_PORT", "8765")))
    studio.start()
    yield studio
    studio.close()


@pytest.fixture
def attached_for_real(
    api, people, workspace, studio_for_pods, settings, admin_kubeconfig
) -> Iterator[Any]:
    """The real cluster registered, its extension installed (with inference, reached
    through the API server: no router image needed), attached as `k8s` in a namespace of
    the test's own; all of it removed afterwards."""
    settings.STUDIO_KUBERNETES_IMAGE = os.environ.get("STUDIO_E2E_IMAGE", "python:3.11-slim")
    namespace = f"kstudio-e2e-{uuid.uuid4().hex[:6]}"
    body = {
        "name": "e2e",
        "kubeconfig": admin_kubeconfig,
        "studio_url": os.environ.get("STUDIO_E2E_STUDIO_URL", studio_for_pods.url),
    }
    it_ops = api(people.it_ops)
    assert it_ops.post("/api/v1/clusters/", body, format="json").status_code == 201
    status = it_ops.get("/api/v1/clusters/e2e/").json()["status"]
    assert status["reachable"] and status["nodes_ready"], status
    attach = {"name": "k8s", "type": "kubernetes", "cluster": "e2e", "namespace": namespace,
              "create_namespace": True}  # fmt: skip
    assert (
        it_ops.post("/api/v1/workspaces/demo/computes/", attach, format="json").status_code == 201
    )
    installed = it_ops.post(
        "/api/v1/clusters/e2e/install/",
        {"set": ["enableInference=true", "inferenceRouter=false"]},
        format="json",
    ).json()
    assert not installed["problems"], installed
    try:
        yield it_ops
    finally:
        it_ops.delete("/api/v1/workspaces/demo/computes/k8s/")
        # As IT-ops would: an admin's kubeconfig, since the studio holds only its own token.
        it_ops.post("/api/v1/clusters/e2e/uninstall/", {"kubeconfig": admin_kubeconfig},
                    format="json")  # fmt: skip
        admin = kube.client_from(*kube.read_kubeconfig(admin_kubeconfig))
        client.CoreV1Api(admin).delete_namespace(namespace)  # the test's own


def test_a_job_runs_on_a_real_cluster(api, people, workspace, attached_for_real):
    text = (
        "command: python main.py ${{inputs.words}} > ${{outputs.model}}/m.txt && echo ok\n"
        "code: src\ncompute: azureml:k8s\n"
        "inputs: {words: {type: uri_file, path: ./words.txt}}\n"
        "outputs: {model: {type: uri_folder}}\n"
    )
    uploads = {
        "code": services.Upload(code_archive(), "code.tar.gz"),
        "inputs.words": services.Upload(io.BytesIO(b"real cluster\n"), "words.txt"),
    }
    job = services.submit_yaml(workspace, people.contributor, text, uploads)

    def ended() -> bool:
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, 600, "the job on the real cluster")
    assert job.status == "Completed", job.failure_reason
    assert list(job.log_lines.values_list("line", flat=True)) == ["ok"]
    url = f"/api/v1/workspaces/demo/jobs/{job.name}/outputs/model/m.txt"
    assert b"".join(api(people.reader).get(url)) == b"REAL CLUSTER\n"


@pytest.mark.skipif(
    not MPI_IMAGE or not (KUBECONFIG or (NSS_WRAPPER and shutil.which("mpirun"))),
    reason="no MPI image named (or, on the development cluster, no mpirun: make test has it)",
)
def test_an_mpi_job_runs_across_pods_of_a_real_cluster(workspace, people, attached_for_real):
    text = (
        "command: echo rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE\n"
        f"environment: {{image: {MPI_IMAGE}}}\n"
        "compute: azureml:k8s\nresources: {instance_count: 2}\n"
        "distribution: {type: mpi, process_count_per_instance: 2}\n"
    )
    job = services.submit_yaml(workspace, people.contributor, text, {})

    def ended() -> bool:
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, 600, "the MPI job on the real cluster")
    assert job.status == "Completed", job.failure_reason
    lines = sorted(job.log_lines.values_list("line", flat=True))
    assert [line for line in lines if "rank" in line] == [f"[0] rank {r} of 4" for r in range(4)], (
        lines
    )


SCORE = b"""
import json

def init():
    pass

def run(raw_data):
    return {"doubled": [2 * x for x in json.loads(raw_data)["data"]]}
"""


def test_an_online_deployment_serves_from_a_real_cluster(
    api, people, attached_for_real, studio_for_pods
):
    """A Deployment and Service in the namespace, scored through the studio's router and
    the API server's service proxy."""
    user = api(people.contributor)
    base = "/api/v1/workspaces/demo/online-endpoints/"
    made = user.post(base, {"yaml": "name: e2e-endpoint\ncompute: azureml:k8s\n"}, format="json")
    assert made.status_code == 201, made.content
    spec = {"name": "blue", "endpoint_name": "e2e-endpoint", "type": "kubernetes",
            "code_configuration": {"code": ".", "scoring_script": "score.py"},
            "instance_count": 1}  # fmt: skip
    code = code_archive({"score.py": SCORE})
    code.name = "code.tar.gz"
    sent = user.post(base + "e2e-endpoint/deployments/?all_traffic=true",
                     {"spec": json.dumps(spec), "code": code}, format="multipart")  # fmt: skip
    assert sent.status_code == 201, sent.content

    def settled() -> dict[str, Any] | None:
        shown = user.get(base + "e2e-endpoint/deployments/blue/").json()
        return shown if shown["provisioning_state"] in ("Succeeded", "Failed") else None

    shown = wait_until(settled, 600, "the deployment on the real cluster")
    assert shown["provisioning_state"] == "Succeeded", shown
    endpoint = user.get(base + "e2e-endpoint/").json()
    keys = user.post(base + "e2e-endpoint/get-credentials/").json()
    # The test client's URI names its own host; the same path on the running studio.
    scoring = studio_for_pods.url + urllib.parse.urlsplit(endpoint["scoring_uri"]).path
    scored = httpx.post(scoring, json={"data": [1, 2]}, timeout=60,
                        headers={"Authorization": f"Bearer {keys['primaryKey']}"})  # fmt: skip
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"doubled": [2, 4]}
    assert user.delete(base + "e2e-endpoint/deployments/blue/").status_code == 409  # traffic
