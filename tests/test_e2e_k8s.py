"""The Kubernetes flows against a real cluster (kind, k3s, a cloud one), when configured:

    STUDIO_E2E_KUBECONFIG=~/.kube/config      the cluster (its current context)
    STUDIO_E2E_STUDIO_URL=http://HOST:8765    how its pods reach the studio these tests run
    STUDIO_E2E_PORT=8765                      the port that studio listens on (all addresses)
    STUDIO_E2E_IMAGE=python:3.11-slim         an image with python3, pullable by the cluster

    kind create cluster && STUDIO_E2E_KUBECONFIG=~/.kube/config \\
        STUDIO_E2E_STUDIO_URL=http://$(hostname -I | cut -d' ' -f1):8765 STUDIO_E2E_PORT=8765 \\
        .venv/bin/python -m pytest -m e2e_k8s

Skipped otherwise (no cluster exists where CI runs); the same flows run in CI against the
fake API server (tests/test_kubernetes.py).
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from compute import kube
from compute.models import Cluster
from jobs import services
from tests.conftest import code_archive, wait_until
from tests.live import LiveStudio

KUBECONFIG = os.environ.get("STUDIO_E2E_KUBECONFIG", "")
pytestmark = [
    pytest.mark.e2e_k8s,
    pytest.mark.skipif(not KUBECONFIG, reason="STUDIO_E2E_KUBECONFIG is not set"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def studio_for_pods(transactional_db: None) -> Iterator[LiveStudio]:
    studio = LiveStudio(host="0.0.0.0", port=int(os.environ.get("STUDIO_E2E_PORT", "8765")))
    studio.start()
    yield studio
    studio.close()


def test_a_job_runs_on_a_real_cluster(api, people, workspace, studio_for_pods, settings):
    settings.STUDIO_KUBERNETES_IMAGE = os.environ.get("STUDIO_E2E_IMAGE", "python:3.11-slim")
    namespace = f"kstudio-e2e-{uuid.uuid4().hex[:6]}"
    body = {
        "name": "e2e",
        "kubeconfig": Path(os.path.expanduser(KUBECONFIG)).read_text(),
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
    installed = it_ops.post("/api/v1/clusters/e2e/install/", {}, format="json").json()
    assert not installed["problems"], installed
    try:
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

        def ended():
            job.refresh_from_db()
            return job.is_terminal

        wait_until(ended, 600, "the job on the real cluster")
        assert job.status == "Completed", job.failure_reason
        assert list(job.log_lines.values_list("line", flat=True)) == ["ok"]
        url = f"/api/v1/workspaces/demo/jobs/{job.name}/outputs/model/m.txt"
        assert b"".join(api(people.reader).get(url)) == b"REAL CLUSTER\n"
    finally:
        it_ops.delete("/api/v1/workspaces/demo/computes/k8s/")
        it_ops.post("/api/v1/clusters/e2e/uninstall/", {}, format="json")
        cluster = kube.api_client(Cluster.objects.get(name="e2e"))
        client.CoreV1Api(cluster).delete_namespace(namespace)  # the test's own
