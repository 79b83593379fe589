"""Online endpoints on the local compute, end to end over HTTP: a real scikit-learn model
and scoring script deployed as blue and green, scored through the router with the
endpoint's keys, traffic split and moved, a deployment named by header, and Azure's
refusals and status codes."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from django.conf import settings as studio_settings
from django.db import connection
from websockets.exceptions import InvalidStatus

from endpoints import spec
from endpoints.models import Deployment, Endpoint
from registry.models import Model
from studio.documents import DocumentError
from tests.conftest import read_socket, token_for, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SCORE = """
import json, os, pickle, time

def init():
    global model
    with open(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model", "model.pkl"), "rb") as f:
        model = pickle.load(f)

def run(raw_data):
    body = json.loads(raw_data)
    if body.get("sleep"):
        time.sleep(body["sleep"])
    if body.get("fail"):
        raise RuntimeError("asked to fail")
    return {"predictions": model.predict(body["data"]).tolist(), "color": os.environ["COLOR"]}
"""


def archive(files: dict[str, bytes]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def model_folder() -> io.BytesIO:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], [0, 1, 0, 1])
    return archive({"model.pkl": pickle.dumps(model)})


def deployment_yaml(name: str, **extra: object) -> str:
    document = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
        "name": name, "endpoint_name": "my-endpoint",
        "model": {"path": "../model-1/model/"},
        "code_configuration": {"code": "../model-1/onlinescoring/", "scoring_script": "score.py"},
        "environment_variables": {"COLOR": name},
        "request_settings": {"request_timeout_ms": 3000, "max_queue_wait_ms": 3000},
        "instance_count": 1, **extra,
    }  # fmt: skip
    return json.dumps(document)


# Model servers run as uids of their own from this base when the tests run as root.
UID_BASE = studio_settings.STUDIO_DEPLOYMENT_UID_BASE


@pytest.fixture
def studio(live_studio, people, settings):
    # These tests score with the studio's own packages (scikit-learn), which may sit where
    # other users cannot read (root's home, on CI's machine): so as the studio's user, as
    # STUDIO_DEPLOYMENT_UID_BASE=0 says. The isolation tests below set it back.
    settings.STUDIO_DEPLOYMENT_PYTHON = sys.executable
    settings.STUDIO_DEPLOYMENT_UID_BASE = 0
    http = httpx.Client(
        base_url=f"{live_studio.url}/api/v1/workspaces/demo/",
        headers={"Authorization": f"Bearer {token_for(people.contributor)}"}, timeout=30,
    )  # fmt: skip
    yield http
    http.close()


def deploy(http: httpx.Client, name: str, **extra: object) -> httpx.Response:
    return http.post(
        "online-endpoints/my-endpoint/deployments/",
        data={"spec": deployment_yaml(name, **extra)},
        files={"code": ("code.tar.gz", archive({"score.py": SCORE.encode()})),
               "model_folder": ("model.tar.gz", model_folder())},
    )  # fmt: skip


def running(http: httpx.Client, name: str) -> dict:
    shown = http.get(f"online-endpoints/my-endpoint/deployments/{name}/").json()
    assert shown["provisioning_state"] != "Failed", shown
    return shown if shown["provisioning_state"] == "Succeeded" else {}


def blue_fails(studio: httpx.Client, script: bytes, timeout: float) -> dict:
    """Deployment blue of a scoring script alone, as shown once it has Failed."""
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    made = studio.post("online-endpoints/my-endpoint/deployments/",
                       data={"spec": json.dumps(spec)},
                       files={"code": ("c.tar.gz", archive({"score.py": script}))})  # fmt: skip
    assert made.status_code == 201, made.text

    def failed() -> dict:
        shown = studio.get("online-endpoints/my-endpoint/deployments/blue/").json()
        return shown if shown["provisioning_state"] == "Failed" else {}

    return dict(wait_until(failed, timeout, "blue to fail"))


def serve_script(
    studio: httpx.Client, spec: dict, script: bytes, timeout: float = 60
) -> tuple[str, dict[str, str]]:
    """A deployment of a scoring script alone (its code: score.py), taking all the
    endpoint's traffic, once it serves: the scoring URI and the key's header."""
    made = studio.post("online-endpoints/my-endpoint/deployments/", params={"all_traffic": "true"},
                       data={"spec": json.dumps(spec)},
                       files={"code": ("c.tar.gz", archive({"score.py": script}))})  # fmt: skip
    assert made.status_code == 201, made.text
    wait_until(lambda: running(studio, spec["name"]), timeout, f"{spec['name']} to serve")
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    uri = studio.get("online-endpoints/my-endpoint/").json()["scoring_uri"]
    return uri, {"Authorization": f"Bearer {keys['primaryKey']}"}


def test_blue_green_deployments_score_through_the_router_with_keys_and_traffic(studio, live_studio):
    made = studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\nauth_mode: Key\n"})
    assert made.status_code == 201, made.text
    uri = made.json()["scoring_uri"]
    assert uri == f"{live_studio.url}/api/v1/endpoint/my-endpoint/score"
    for color in ("blue", "green"):
        answer = deploy(studio, color)
        assert answer.status_code == 201, answer.text
    for color in ("blue", "green"):
        wait_until(lambda c=color: running(studio, c), 60, f"{color} to serve")
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    primary = {"Authorization": f"Bearer {keys['primaryKey']}"}
    # Keys are shown by get-credentials alone, and kept encrypted.
    for shown in (
        studio.get("online-endpoints/").text,
        studio.get("online-endpoints/my-endpoint/").text,
    ):
        assert keys["primaryKey"] not in shown and keys["secondaryKey"] not in shown
    with connection.cursor() as cursor:
        cursor.execute("SELECT keys FROM endpoints_endpoint")
        assert keys["primaryKey"] not in cursor.fetchone()[0]
    body = {"data": [[0.0, 0.1], [1.0, 0.9]]}
    # No traffic yet: nothing takes it. A wrong key reaches nothing.
    assert httpx.post(uri, json=body, headers=primary).status_code == 404
    assert httpx.post(uri, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(uri, json=body).status_code == 401
    # All to blue, then 50/50: the split shows in who answers.
    moved = studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 100}})
    assert moved.status_code == 200, moved.text
    scored = httpx.post(uri, json=body, headers=primary)
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"predictions": [0, 1], "color": "blue"}
    assert scored.headers["azureml-model-deployment"] == "blue"
    studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 50, "green": 50}})
    seen = collections.Counter(
        httpx.post(uri, json=body, headers=primary).headers["azureml-model-deployment"]
        for _ in range(200)
    )
    assert set(seen) == {"blue", "green"} and min(seen.values()) > 60, seen  # p < 1e-4 else
    # The header targets one deployment, whatever the split; the secondary key works too.
    secondary = {"Authorization": f"Bearer {keys['secondaryKey']}",
                 "azureml-model-deployment": "green"}  # fmt: skip
    assert httpx.post(uri, json=body, headers=secondary).json()["color"] == "green"
    # Azure's codes: run() raised -> 502; too slow -> 504.
    failed = httpx.post(uri, json={**body, "fail": True}, headers=secondary)
    assert failed.status_code == 502 and "asked to fail" in failed.text
    slow = httpx.post(uri, json={**body, "sleep": 4}, headers=secondary, timeout=30)
    assert slow.status_code == 504
    # A deployment with live traffic cannot be deleted; a regenerated key stops working.
    refused = studio.delete("online-endpoints/my-endpoint/deployments/green/")
    assert refused.status_code == 409 and "traffic" in refused.text
    studio.post("online-endpoints/my-endpoint/regenerate-keys/", json={"key_type": "primary"})
    assert httpx.post(uri, json=body, headers=primary).status_code == 401
    logs = studio.get("online-endpoints/my-endpoint/deployments/blue/logs/", params={"lines": 5})
    assert "POST /score" in logs.text


def test_endpoint_and_deployment_documents_are_checked_by_field(studio):
    cases = {
        "name: x\n": "name",
        "name: my-endpoint\nauth_mode: aad_token\n": "auth_mode",
        "name: my-endpoint\nidentity:\n  type: system_assigned\n": "identity",
        "name: my-endpoint\npublic_network_access: disabled\n": "public_network_access",
        "name: my-endpoint\ntraffic:\n  blue: 100\n": "traffic.blue",
        "name: my-endpoint\ncompute: azureml:nope\n": "compute",
    }
    for text, field in cases.items():
        refused = studio.post("online-endpoints/", json={"yaml": text})
        assert refused.status_code == 400, text
        fields = [e["field"] for e in refused.json()["errors"]]
        messages = " ".join(e["message"] for e in refused.json()["errors"])
        assert field in fields or field in messages, (text, refused.json())
    assert not Endpoint.objects.exists()
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    bad = studio.post(
        "online-endpoints/my-endpoint/deployments/",
        data={"spec": deployment_yaml("blue", data_collector={"collections": {}},
                                      model="azureml:no-such-model:1")},
    )  # fmt: skip
    assert bad.status_code == 400
    unknown = studio.post(
        "online-endpoints/my-endpoint/deployments/",
        data={"spec": deployment_yaml("blue", instance_type="Standard_NC6")},
        files={"code": ("code.tar.gz", archive({"score.py": SCORE.encode()})),
               "model_folder": ("model.tar.gz", model_folder())},
    )  # fmt: skip
    errors = {e["field"]: e["message"] for e in unknown.json()["errors"]}
    assert "defaultinstancetype" in errors["instance_type"]
    assert "Standard_DS3_v2" in errors["instance_type"]  # the VM sizes that are mapped
    assert not Deployment.objects.exists()
    assert not Model.objects.exists()  # the inline model is registered only once all is well


def test_azures_defaults_and_rules_apply_to_a_deployment_document():
    document = spec.parse_deployment(
        {"name": "blue", "endpoint_name": "my-endpoint", "type": "kubernetes",
         "model": "azureml:m:1", "resources": {"requests": {"cpu": "0.1", "memory": "0.1Gi"}}}
    )  # fmt: skip
    assert document.request_settings.model_dump() == {
        "request_timeout_ms": 5000, "max_concurrent_requests_per_instance": 1,
        "max_queue_wait_ms": 500,
    }  # fmt: skip
    assert document.liveness_probe.model_dump() == {
        "period": 10, "initial_delay": 10, "timeout": 2, "success_threshold": 1,
        "failure_threshold": 30,
    }  # fmt: skip
    assert document.scale_settings is not None
    assert document.scale_settings.model_dump() == {
        "type": "target_utilization", "min_instances": 1, "max_instances": 1,
        "target_utilization_percentage": 70, "polling_interval": 1,
    }  # fmt: skip
    with pytest.raises(DocumentError) as refused:
        spec.parse_deployment({"name": "blue", "endpoint_name": "e-1", "model": "azureml:m:1",
                               "resources": {"requests": {"cpu": "1"}}})  # fmt: skip
    assert "requests needs cpu and memory" in str(refused.value.errors)
    with pytest.raises(DocumentError) as mirrored:
        spec.parse_endpoint({"name": "e-1", "traffic": {"blue": 100},
                             "mirror_traffic": {"blue": 10}})  # fmt: skip
    assert "takes live traffic" in str(mirrored.value.errors)
    with pytest.raises(DocumentError):
        spec.parse_endpoint({"name": "e-1", "traffic": {"blue": 60, "green": 30}})


# azureml-examples' online/model-1/onlinescoring/score.py, as it reads its model.
EXAMPLE_SCORE = """
import json, logging, os
import joblib, numpy

def init():
    global model
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model/sklearn_regression_model.pkl")
    model = joblib.load(model_path)
    logging.info("Init complete")

def run(raw_data):
    data = numpy.array(json.loads(raw_data)["data"])
    return model.predict(data).tolist()
"""


def example_tree(tmp_path, compat):
    """Azure's kubernetes endpoint and blue/green deployment files, beside model-1 and
    model-2 as the example lays them out (their model and score.py made here: the
    compat copy ships neither)."""
    import joblib
    from sklearn.linear_model import LinearRegression

    online = compat / "cli" / "endpoints" / "online"
    for kind in ("kubernetes",):
        (tmp_path / kind).mkdir()
        for f in (online / kind).glob("*.yml"):
            (tmp_path / kind / f.name).write_text(f.read_text())
    for index, slope in (("1", 1.0), ("2", 2.0)):
        base = tmp_path / f"model-{index}"
        (base / "model").mkdir(parents=True)
        (base / "onlinescoring").mkdir()
        (base / "environment").mkdir()
        x = [[float(i + j) for j in range(10)] for i in range(20)]
        y = [slope * sum(row) for row in x]
        joblib.dump(LinearRegression().fit(x, y), base / "model" / "sklearn_regression_model.pkl")
        (base / "onlinescoring" / "score.py").write_text(EXAMPLE_SCORE)
        conda = online / f"model-{index}" / "environment" / "conda.yaml"
        (base / "environment" / "conda.yaml").write_text(conda.read_text())
    request = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}
    (tmp_path / "sample-request.json").write_text(json.dumps(request))
    return tmp_path


def walk_azures_blue_green_example(kstudio, tree: Path, compute: str) -> None:
    """Azure's safe rollout with its own files, from the CLI: blue takes all traffic,
    green joins, traffic moves 90/10, 50/50, then all to green while blue is rolled to two
    instances; a client scoring all the while never gets a failure."""
    k8s = tree / "kubernetes"
    kstudio("online-endpoint", "create", "-f", str(k8s / "kubernetes-endpoint.yml"),
            "--set", f"compute=azureml:{compute}", check=True)  # fmt: skip
    kstudio("online-deployment", "create", "-f", str(k8s / "kubernetes-blue-deployment.yml"),
            "--all-traffic", check=True)  # fmt: skip
    invoked = kstudio("online-endpoint", "invoke", "-n", "my-endpoint", "--request-file",
                      str(tree / "sample-request.json"), check=True)  # fmt: skip
    assert json.loads(invoked.stdout) == pytest.approx([55.0, 55.0])
    kstudio("online-deployment", "create", "-f", str(k8s / "kubernetes-green-deployment.yml"),
            check=True)  # fmt: skip
    uri = kstudio("online-endpoint", "show", "-n", "my-endpoint", "--query", "scoring_uri",
                  "-o", "tsv", check=True).stdout.strip()  # fmt: skip
    assert uri.endswith("/api/v1/endpoint/my-endpoint/score")
    key = json.loads(kstudio("online-endpoint", "get-credentials", "-n", "my-endpoint",
                             check=True).stdout)["primaryKey"]  # fmt: skip
    answers: list[tuple[int, str, object]] = []
    done = threading.Event()

    def score() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            while not done.is_set():
                r = http.post(uri, content=(tree / "sample-request.json").read_bytes(),
                              headers={"Content-Type": "application/json"})  # fmt: skip
                answers.append((r.status_code, r.headers.get("azureml-model-deployment", ""),
                                r.json() if r.status_code == 200 else r.text))  # fmt: skip

    caller = threading.Thread(target=score)
    caller.start()
    try:
        for split in ("blue=90 green=10", "blue=50 green=50"):
            kstudio("online-endpoint", "update", "-n", "my-endpoint", "--traffic", split,
                    check=True)  # fmt: skip
            before = len(answers)
            wait_until(lambda n=before: len(answers) > n + 40, 60, "answers")
        kstudio("online-deployment", "update", "-f", str(k8s / "kubernetes-blue-deployment.yml"),
                "--set", "instance_count=2", check=True)  # fmt: skip
        kstudio("online-endpoint", "update", "-n", "my-endpoint", "--traffic",
                "blue=0 green=100", check=True)  # fmt: skip
        settled = len(answers)
        wait_until(lambda: len(answers) > settled + 40, 60, "answers after the move")
    finally:
        done.set()
        caller.join(60)
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    assert {name for _, name, _ in answers} == {"blue", "green"}
    assert {name for _, name, _ in answers[-10:]} == {"green"}
    assert answers[-1][2] == pytest.approx([110.0, 110.0])  # model-2 doubles
    shown = json.loads(kstudio("online-deployment", "show", "-n", "blue", "-e", "my-endpoint",
                               "-o", "json", check=True).stdout)  # fmt: skip
    assert (shown["instances_running"], shown["provisioning_state"]) == (2, "Succeeded")


def test_azures_blue_green_example_deploys_and_moves_traffic_without_a_failed_request(
    kstudio, tmp_path, settings
):

    compat = Path(__file__).resolve().parents[2] / "shared" / "compat" / "azureml-examples"
    if not compat.is_dir():
        pytest.skip("shared/compat is not beside the checkout")
    # The example's environment (numpy, scikit-learn, Azure's inference server...) is
    # built from the host's package index, once per checkout: both run modes reuse it.
    settings.STUDIO_ENVIRONMENTS_DIR = (
        Path(__file__).resolve().parents[1] / "var" / "test-environments"
    )
    walk_azures_blue_green_example(kstudio, example_tree(tmp_path, compat), "local")
    kstudio("online-deployment", "delete", "-n", "blue", "-e", "my-endpoint", check=True)
    logs = kstudio("online-deployment", "get-logs", "-n", "green", "-e", "my-endpoint",
                   "--lines", "3", check=True).stdout  # fmt: skip
    assert "POST /score" in logs


def test_overload_is_refused_with_azures_codes_and_mirrored_traffic_is_copied(studio):
    """One instance taking one request at a time, a queue wait of 0.2 s: of three slow
    requests at once, one is served and the others refused, 503 on a kubernetes
    deployment, 429 on a managed one. Mirrored traffic reaches its deployment, whose
    answers nobody sees."""
    from concurrent.futures import ThreadPoolExecutor

    made = studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    uri = made.json()["scoring_uri"]
    tight = {"request_timeout_ms": 10000, "max_concurrent_requests_per_instance": 1,
             "max_queue_wait_ms": 200}  # fmt: skip
    for color, kind in (("blue", "kubernetes"), ("green", "managed")):
        answer = deploy(studio, color, type=kind, request_settings=tight)
        assert answer.status_code == 201, answer.text
    for color in ("blue", "green"):
        wait_until(lambda c=color: running(studio, c), 60, f"{color} to serve")
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    headers = {"Authorization": f"Bearer {keys['primaryKey']}"}
    slow = {"data": [[1.0, 1.0]], "sleep": 1.5}
    for color, refused in (("blue", 503), ("green", 429)):
        with ThreadPoolExecutor(3) as pool:
            statuses = sorted(pool.map(
                lambda _, c=color: httpx.post(
                    uri, json=slow, timeout=30,
                    headers={**headers, "azureml-model-deployment": c},
                ).status_code,
                range(3),
            ))  # fmt: skip
        assert statuses == [200, refused, refused], (color, statuses)
    # All live traffic to blue, half of it mirrored to green.
    split = {"traffic": {"blue": 100}, "mirror_traffic": {"green": 50}}
    moved = studio.patch("online-endpoints/my-endpoint/", json=split)
    assert moved.status_code == 200, moved.text
    before = studio.get("online-endpoints/my-endpoint/deployments/green/logs/",
                        params={"lines": 10000}).text.count("POST /score")  # fmt: skip
    answered = {
        httpx.post(uri, json={"data": [[0.0, 0.0]]}, headers=headers).headers[
            "azureml-model-deployment"
        ]
        for _ in range(40)
    }
    assert answered == {"blue"}

    def mirrored() -> int:
        log = studio.get("online-endpoints/my-endpoint/deployments/green/logs/",
                         params={"lines": 10000}).text  # fmt: skip
        return log.count("POST /score") - before

    wait_until(lambda: mirrored() >= 5, 30, "mirrored requests to reach green")
    assert mirrored() < 40
    refused = studio.patch("online-endpoints/my-endpoint/", json={"mirror_traffic": {"blue": 10}})
    assert refused.status_code == 400 and "live traffic" in refused.text


def test_a_deployment_that_follows_its_models_latest_version_rolls_to_a_new_one(
    studio, workspace, people
):
    """`model: azureml:clf@latest`: registering version 2 (as a retraining job would)
    rolls the deployment to it, and its history says so."""
    from sklearn.linear_model import LogisticRegression

    from registry.services import create_model

    def register(labels: list[int]) -> None:
        fitted = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], labels)
        weights = archive({"model.pkl": pickle.dumps(fitted)})
        data = {"name": "clf", "path": "model"}
        create_model(workspace, people.contributor, data, weights, upload_is_folder=True)

    register([0, 1, 0, 1])
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\ntraffic: {}\n"})
    answer = deploy(studio, "blue", model="azureml:clf@latest")
    assert answer.status_code == 201, answer.text
    wait_until(lambda: running(studio, "blue"), 60, "blue to serve")
    studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 100}})
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    uri = studio.get("online-endpoints/my-endpoint/").json()["scoring_uri"]
    headers = {"Authorization": f"Bearer {keys['primaryKey']}"}
    body = {"data": [[0.0, 0.0], [1.0, 1.0]]}
    assert httpx.post(uri, json=body, headers=headers).json()["predictions"] == [0, 1]
    register([1, 0, 1, 0])  # version 2 learned the opposite
    wait_until(lambda: running(studio, "blue").get("model") == "clf:2", 60, "the roll to v2")
    assert httpx.post(uri, json=body, headers=headers).json()["predictions"] == [1, 0]
    history = studio.get("online-endpoints/my-endpoint/deployments/blue/").json()["history"]
    assert [h["what"] for h in history] == [
        "created, serving clf:1",
        "rolled to clf:2, its latest version",
    ]
    # A served version stays: MLflow's delete says why; the compute target keeps too.
    from compute.services import ComputeInUse, delete_compute
    from registry.services import delete_version
    from studio.errors import Conflict

    with pytest.raises(Conflict, match="served by a deployment"):
        delete_version(Model.objects.get(name="clf", version="2"))
    with pytest.raises(ComputeInUse, match="serves endpoints my-endpoint"):
        delete_compute(Endpoint.objects.get(name="my-endpoint").compute)  # fmt: skip


def test_a_deployment_runs_in_its_own_environment_built_from_its_conda_file(
    studio, settings, kstudio, live_studio, people
):
    """The model server runs in a virtual environment with the conda file's pip packages
    (toolz here, which the studio itself lacks); the build's log is the
    storage-initializer's; a package that does not exist fails the deployment clearly."""
    settings.STUDIO_DEPLOYMENT_PYTHON = ""  # the studio's own interpreter, to build from
    script = (
        b"import toolz, sys\n\ndef init():\n    pass\n\ndef run(raw):\n"
        b"    return {'first': toolz.first([7, 8]), 'venv': sys.prefix != sys.base_prefix}\n"
    )
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    environment = {"image": "python:3.11-slim",
                   "conda_file": {"dependencies": [{"pip": ["toolz"]}]}}  # fmt: skip
    spec = {"name": "blue", "endpoint_name": "my-endpoint", "environment": environment,
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    uri, auth = serve_script(studio, spec, script, 300)  # its environment built first
    scored = httpx.post(uri, content=b"{}", headers=auth)
    assert scored.json() == {"first": 7, "venv": True}
    built = kstudio("online-deployment", "get-logs", "-n", "blue", "-e", "my-endpoint",
                    "--container", "storage-initializer", check=True).stdout  # fmt: skip
    assert "environment: building inline" in built and "is ready" in built
    # The same lines, and the model server's, are in the log store: live on the socket,
    # each saying which instance and container wrote it.
    socket = (
        f"{live_studio.url.replace('http', 'ws')}/ws/workspaces/demo/online-endpoints/"
        "my-endpoint/deployments/blue/logs/"
    )

    def both(read: list[dict]) -> bool:
        ready = any("is ready" in m["line"] for m in read if m["instance"] == "g1")
        return ready and any(m["instance"] == "g1-instance-0" for m in read)

    read = read_socket(socket, token_for(people.contributor), both)
    assert [m["seq"] for m in read] == list(range(1, len(read) + 1))
    assert {m["container"] for m in read if m["instance"] == "g1"} == {"storage-initializer"}
    served = {m["container"] for m in read if m["instance"] == "g1-instance-0"}
    assert served == {"inference-server"}
    # The preparation's lines come first: its log was written first.
    first_served = next(i for i, m in enumerate(read) if m["instance"] == "g1-instance-0")
    assert all(m["instance"] == "g1" for m in read[:first_served])
    # Resumed after a seq, it sends only what follows; a stranger is refused.
    last = len(read) - 1
    again = read_socket(f"{socket}?after={last}", token_for(people.contributor), lambda r: r != [])
    assert again[0]["seq"] == last + 1 and again[0]["line"] == read[last]["line"]
    with pytest.raises(InvalidStatus):
        read_socket(socket, token_for(people.stranger), lambda r: True)
    # The CLI follows the same socket: one container's lines, each with its instance.
    follow = subprocess.Popen(
        [sys.executable, "-m", "kstudio_cli", "online-deployment", "get-logs", "-n", "blue",
         "-e", "my-endpoint", "--container", "storage-initializer", "--follow"],
        env=dict(os.environ, KSTUDIO_URL=live_studio.url, KSTUDIO_WORKSPACE="demo",
                 KSTUDIO_TOKEN=token_for(people.contributor)),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    timer = threading.Timer(60, follow.kill)  # a CLI that never says it ends the loop
    timer.start()
    try:
        assert follow.stdout is not None
        seen = []
        for line in follow.stdout:
            seen.append(line)
            if "is ready" in line:
                break
        assert seen and all(line.startswith("[g1] ") for line in seen), seen
        assert "is ready" in seen[-1]
    finally:
        timer.cancel()
        follow.kill()
        follow.wait()
    # A package that does not exist: Failed, with Azure-style code and pip's words.
    spec["name"] = "green"
    environment["conda_file"] = {"dependencies": [{"pip": ["no-such-package-kstudio-x"]}]}
    studio.post("online-endpoints/my-endpoint/deployments/", data={"spec": json.dumps(spec)},
                files={"code": ("c.tar.gz", archive({"score.py": script}))})  # fmt: skip

    def failed() -> dict:
        shown = studio.get("online-endpoints/my-endpoint/deployments/green/").json()
        return shown if shown["provisioning_state"] == "Failed" else {}

    shown = wait_until(failed, 300, "green to fail")
    assert shown["error_code"] == "EnvironmentBuildFailed"
    assert "no-such-package-kstudio-x" in shown["reason"]


def test_target_utilization_scales_on_the_routers_counts_and_the_charts_show_it(
    studio, settings, client, people
):
    """Three slow requests at a time against one instance taking one: 300% of the 70%
    target, so the deployment grows at once to its max of 3; idle, it shrinks back one at
    a time after STUDIO_SCALE_DOWN_POLLS polls. The router's counts are the charts'."""
    from concurrent.futures import ThreadPoolExecutor

    settings.STUDIO_SCALE_DOWN_POLLS = 3
    made = studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    uri = made.json()["scoring_uri"]
    scale = {"type": "target_utilization", "min_instances": 1, "max_instances": 3,
             "target_utilization_percentage": 70, "polling_interval": 1}  # fmt: skip
    patient = {"request_timeout_ms": 20000, "max_concurrent_requests_per_instance": 1,
               "max_queue_wait_ms": 20000}  # fmt: skip
    answer = deploy(studio, "blue", type="kubernetes", scale_settings=scale,
                    request_settings=patient)  # fmt: skip
    assert answer.status_code == 201, answer.text
    wait_until(lambda: running(studio, "blue"), 60, "blue to serve")
    studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 100}})
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    headers = {"Authorization": f"Bearer {keys['primaryKey']}"}

    def shown() -> dict:
        return studio.get("online-endpoints/my-endpoint/deployments/blue/").json()

    statuses: list[int] = []
    with ThreadPoolExecutor(3) as pool:
        while shown()["instances_running"] < 3:
            statuses += pool.map(
                lambda _: httpx.post(uri, json={"data": [[1.0, 1.0]], "sleep": 0.6},
                                     headers=headers, timeout=30).status_code,
                range(3),
            )  # fmt: skip
            assert len(statuses) < 200, "blue never grew to 3 instances"
    assert set(statuses) == {200}
    grown = shown()
    assert grown["provisioning_state"] == "Succeeded"
    assert any("scaled from 1 to 3" in h["what"] for h in grown["history"]), grown["history"]
    # Idle: one instance fewer after each few polls, down to min_instances.
    wait_until(lambda: shown()["instances_running"] == 1, 60, "blue to shrink back to 1")
    steps = [h["what"] for h in shown()["history"] if "scaled" in h["what"]]
    assert [s.split(" instance")[0] for s in steps] == [
        "scaled from 1 to 3",
        "scaled from 3 to 2",
        "scaled from 2 to 1",
    ]
    scored = httpx.post(uri, json={"data": [[1.0, 1.0]]}, headers=headers, timeout=30)
    assert scored.status_code == 200
    # The charts' data: requests by code, latency percentiles, replicas over time.
    client.force_login(people.reader)
    data = client.get("/workspaces/demo/endpoints/my-endpoint/blue/traffic/").json()
    assert sum(data["codes"]["200"]) >= len(statuses)
    assert max(data["replicas"]) == 3 and max(data["busy"]) >= 3
    assert all(p is None or p >= 500 for p in data["latency"]["p50"])  # each slept 0.6 s
    page = client.get("/workspaces/demo/endpoints/my-endpoint/").content.decode()
    assert "studio/traffic.js" in page and "Latency percentiles of blue" in page


def test_autoscaling_grows_at_once_and_shrinks_only_after_a_run_of_quiet_polls():
    from endpoints.autoscale import decide

    # 3 busy on 1 instance taking 2: 150% of 70% -> ceil(3 / 1.4) = 3, within 1..4.
    assert decide(1, 3, 2, 70, 1, 4, 0, 20).replicas == 3
    assert decide(3, 30, 1, 70, 1, 4, 0, 20).replicas == 4  # never past max_instances
    # 1 busy on 2 instances: 50%; with one fewer, 100% > 70%: it stays, and says so.
    assert decide(2, 1, 1, 70, 1, 4, 5, 20) == decide(2, 1, 1, 70, 1, 4, 0, 20)
    assert decide(2, 1, 1, 70, 1, 4, 5, 20).replicas == 2
    # Idle on 3: one fewer after 20 quiet polls, not before; never under min_instances.
    assert decide(3, 0, 1, 70, 1, 4, 18, 20).replicas == 3
    assert decide(3, 0, 1, 70, 1, 4, 19, 20).replicas == 2
    assert decide(1, 0, 1, 70, 1, 4, 19, 20).replicas == 1


def test_latency_percentiles_come_from_buckets_that_add_up_across_routers():
    from endpoints.traffic import bucket_of, percentile

    latency = [0] * 17
    for ms in (0.5, 3, 3, 40, 900):
        latency[bucket_of(ms)] += 1
    assert percentile(latency, 0.5) == 5.0
    assert percentile(latency, 0.99) == 1000.0
    assert percentile([0] * 17, 0.5) is None


def test_an_aml_token_endpoint_takes_short_lived_tokens_for_itself_only(studio, monkeypatch):
    from endpoints import services as endpoint_services

    made = studio.post(
        "online-endpoints/", json={"yaml": "name: my-endpoint\nauth_mode: AML_Token\n"}
    )
    assert made.status_code == 201 and made.json()["auth_mode"] == "aml_token"
    other = studio.post(
        "online-endpoints/", json={"yaml": "name: other-endpoint\nauth_mode: aml_token\n"}
    )
    assert other.status_code == 201
    assert deploy(studio, "blue").status_code == 201
    wait_until(lambda: running(studio, "blue"), 60, "blue to serve")
    studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 100}})
    uri = made.json()["scoring_uri"]
    issued = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    assert set(issued) == {"accessToken", "tokenType", "expiryTimeUtc", "refreshAfterTimeUtc"}
    assert issued["expiryTimeUtc"] > issued["refreshAfterTimeUtc"]
    body = {"data": [[1.0, 1.0]]}

    def score(token: str) -> int:
        return httpx.post(uri, json=body, headers={"Authorization": f"Bearer {token}"}).status_code

    assert score(issued["accessToken"]) == 200
    stranger = studio.post("online-endpoints/other-endpoint/get-credentials/").json()
    assert score(stranger["accessToken"]) == 401  # another endpoint's token
    assert score(issued["accessToken"][:-2] + "xx") == 401
    # Past its lifetime a token is refused (the lifetime made shorter than its age).
    monkeypatch.setattr(endpoint_services, "TOKEN_SECONDS", -1)
    assert score(issued["accessToken"]) == 401


def test_model_servers_left_by_a_killed_runner_are_stopped_and_nothing_else():
    import subprocess

    from endpoints import runner

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen([*sleeper, f"/var/deployments/1/1/{runner.SERVER}"],
                            start_new_session=True)  # fmt: skip
    other = subprocess.Popen(sleeper, start_new_session=True)
    try:
        runner.stop_orphans([{"url": "a", "pid": ours.pid}, {"url": "b", "pid": other.pid}])
        assert ours.wait(10) == -9
        assert other.poll() is None  # not a model server: left alone
    finally:
        other.kill()
        other.wait()


def test_an_instance_that_dies_or_hangs_is_restarted_as_a_kubelet_would(studio):
    """Locally, the runner is the kubelet: an instance that exits, or that fails its
    liveness probe `failure_threshold` times in a row (here a stopped process), leaves
    the router's table and a new one takes its place; each restart is in the history."""
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\nauth_mode: key\n"})
    probe = {"period": 1, "initial_delay": 0, "timeout": 1, "failure_threshold": 2}
    assert deploy(studio, "blue", liveness_probe=probe).status_code == 201
    wait_until(lambda: running(studio, "blue"), 60, "blue to serve")
    studio.patch("online-endpoints/my-endpoint/", json={"traffic": {"blue": 100}})
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    uri = studio.get("online-endpoints/my-endpoint/").json()["scoring_uri"]
    auth = {"Authorization": f"Bearer {keys['primaryKey']}"}

    def replaced(old: int, because: str) -> dict:
        shown = running(studio, "blue")
        pids = [i["pid"] for i in Deployment.objects.get(name="blue").instances]
        moved = pids and old not in pids and because in shown["history"][-1]["what"]
        return shown if moved else {}

    first = Deployment.objects.get(name="blue").instances[0]["pid"]
    os.killpg(first, signal.SIGKILL)
    shown = wait_until(lambda: replaced(first, "exited"), 60, "a new instance after the kill")
    assert shown["history"][-1]["what"] == "instance 0 restarted: it exited with code -9"
    assert httpx.post(uri, json={"data": [[0.0, 0.1]]}, headers=auth).status_code == 200
    second = Deployment.objects.get(name="blue").instances[0]["pid"]
    os.killpg(second, signal.SIGSTOP)  # alive, but answers nothing
    shown = wait_until(lambda: replaced(second, "liveness"), 60, "a new instance after the hang")
    assert "failed 2 liveness probes in a row" in shown["history"][-1]["what"]
    assert httpx.post(uri, json={"data": [[0.0, 0.1]]}, headers=auth).status_code == 200
    with pytest.raises(ProcessLookupError):  # the hung one was stopped for good
        os.kill(second, 0)


CRASHING = b"""
import os, sys, threading

def init():
    def crash():
        print("the GPU driver went away", file=sys.stderr, flush=True)
        os._exit(3)
    threading.Timer(2.0, crash).start()  # once it serves

def run(raw_data):
    return raw_data
"""


def test_instances_that_crash_in_a_loop_fail_the_deployment_with_azures_code(studio, monkeypatch):
    """Each crash is restarted, as a kubelet does, until there are more restarts than
    CRASH_LOOP_RESTARTS within CRASH_LOOP_SECONDS: then DeploymentCrashLoopBackOff, with
    how the last one ended and what it said."""
    from endpoints import runner

    monkeypatch.setattr(runner, "CRASH_LOOP_RESTARTS", 2)
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\nauth_mode: key\n"})
    shown = blue_fails(studio, CRASHING, 90)
    assert shown["error_code"] == "DeploymentCrashLoopBackOff"
    assert shown["reason"].startswith("instances were restarted 3 times in 10 minutes")
    assert "it exited with code 3" in shown["reason"]
    assert "the GPU driver went away" in shown["reason"]
    restarts = [h["what"] for h in shown["history"] if "restarted" in h["what"]]
    assert restarts == ["instance 0 restarted: it exited with code 3"] * 2


def test_the_liveness_probe_waits_its_initial_delay_after_an_instance_joins():
    from endpoints.runner import Runner, Running

    class Stopped:
        pid = 4242

        @staticmethod
        def poll() -> None:
            return None

    deployment = Deployment(document={"liveness_probe": {"initial_delay": 30, "period": 1}})
    running = Running(generation=1)
    before = time.monotonic()
    assert Runner().unwell(deployment, running, Stopped(), "http://127.0.0.1:9") == ""  # type: ignore[arg-type]
    assert running.probe_at[4242] >= before + 30  # no probe sent before then
    assert 4242 not in running.failures


ISOLATED = b"""
import os

def init():
    pass

def run(raw_data):
    try:
        with open(os.environ["STUDIO_FILE"]) as f:
            f.read()
        studio_file = "read"
    except OSError as exc:
        studio_file = type(exc).__name__
    return {"uid": os.getuid(), "studio_file": studio_file,
            "home": os.access(os.environ["HOME"], os.W_OK)}
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="own users only when the studio runs as root")
def test_a_local_deployment_runs_as_a_user_of_its_own_as_jobs_do(studio, settings, tmp_path):
    """A scoring script is anyone's code: it must not read what the studio keeps (its
    secret key, its database: 0600 files like this one)."""
    from compute.launcher import runnable_by_anyone

    # An interpreter its uid can run (the studio's may sit in /root, as on CI's machine).
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or ""
    if not python or not runnable_by_anyone(os.path.realpath(python)):
        pytest.skip("no python3 here that other users may run")
    settings.STUDIO_DEPLOYMENT_PYTHON = python
    settings.STUDIO_DEPLOYMENT_UID_BASE = UID_BASE
    studio_file = tmp_path / "studio-only"
    studio_file.write_text("the studio's")
    assert studio_file.stat().st_mode & 0o777 == 0o600
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"},
            "environment_variables": {"STUDIO_FILE": str(studio_file)}}  # fmt: skip
    uri, auth = serve_script(studio, spec, ISOLATED)
    answer = httpx.post(uri, json={}, headers=auth)
    blue = Deployment.objects.get(name="blue")
    assert answer.json() == {"uid": settings.STUDIO_DEPLOYMENT_UID_BASE + blue.pk,
                             "studio_file": "PermissionError", "home": True}  # fmt: skip


def test_a_local_deployment_is_held_to_its_resource_limits(studio):
    """As for local jobs: limits.memory is each model server process's data-size limit
    (an allocation past it fails, and run() says so with a 502), limits.cpu pins it to
    as many cores."""
    script = (
        b"import os\n\ndef init():\n    pass\n\ndef run(raw):\n"
        b"    size = int(raw) * 2**20\n    data = bytearray(size)\n"
        b"    return {'cores': len(os.sched_getaffinity(0)), 'allocated': len(data)}\n"
    )
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"},
            "resources": {"requests": {"cpu": "100m", "memory": "100Mi"},
                          "limits": {"cpu": "1", "memory": "300Mi"}}}  # fmt: skip
    uri, auth = serve_script(studio, spec, script)
    small = httpx.post(uri, content=b"10", headers=auth)
    assert small.json() == {"cores": 1, "allocated": 10 * 2**20}, small.text
    big = httpx.post(uri, content=b"500", headers=auth)
    assert big.status_code == 502 and "MemoryError" in big.text, big.text


def test_an_update_before_the_deployment_serves_cancels_the_generation_under_way(studio):
    """Azure's Canceled: a generation still starting when a newer one is asked for is
    dropped (its instance stopped), and the history says so; the newer one serves."""
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    scripts = {
        "slow": b"import time\n\ndef init():\n    time.sleep(120)\n\n"
        b"def run(raw):\n    return 'slow'\n",
        "quick": b"def init():\n    pass\n\ndef run(raw):\n    return 'quick'\n",
    }
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    for method, path, script in (
        ("POST", "online-endpoints/my-endpoint/deployments/", "slow"),
        ("PUT", "online-endpoints/my-endpoint/deployments/blue/", "quick"),
    ):
        code = archive({"score.py": scripts[script]})
        sent = studio.request(method, path, params={"all_traffic": "true"},
                              data={"spec": json.dumps(spec)},
                              files={"code": ("c.tar.gz", code)})  # fmt: skip
        assert sent.status_code in (200, 201), sent.text
    shown = wait_until(lambda: running(studio, "blue"), 60, "the newer generation to serve")
    assert [(h["generation"], h["what"]) for h in shown["history"]] == [
        (1, "created, serving its scoring script"),
        (1, "Canceled: superseded before it served"),
        (2, "updated, serving its scoring script"),
    ]
    keys = studio.post("online-endpoints/my-endpoint/get-credentials/").json()
    uri = studio.get("online-endpoints/my-endpoint/").json()["scoring_uri"]
    answer = httpx.post(
        uri, content=b"{}", headers={"Authorization": f"Bearer {keys['primaryKey']}"}
    )
    assert answer.text == "quick"


def test_a_busy_deployment_keeps_its_latest_log_lines_a_second_and_says_how_many_it_left(
    settings,
):
    from endpoints import logs

    settings.STUDIO_DEPLOYMENT_LOG_RATE = 3
    read = [logs.Line(float(i), "g1-instance-0", "inference-server", f"POST /score {i}")
            for i in range(10)]  # fmt: skip
    kept = logs._within_rate(read)
    assert [line.line for line in kept] == [
        "(7 lines not kept here: more than 3 a second; get-logs reads every line from the "
        "instance)",
        "POST /score 7",
        "POST /score 8",
        "POST /score 9",
    ]
    assert logs._within_rate(read[:3]) == read[:3]
    # Counted per container: a quiet one's lines are kept beside a busy one's (CI once
    # missed a new pod's initializer, crowded out by the old pod's requests).
    quiet = logs.Line(0.5, "g2-instance-0", "storage-initializer", "unpacked code.tar.gz")
    kept = logs._within_rate([*read, quiet])
    assert [line.line for line in kept] == [
        "unpacked code.tar.gz",
        "(7 lines not kept here: more than 3 a second; get-logs reads every line from the "
        "instance)",
        "POST /score 7",
        "POST /score 8",
        "POST /score 9",
    ]


def test_what_the_runner_read_before_a_delete_or_an_update_does_not_undo_it(workspace, people):
    """The runner writes a deployment's state from what it read a moment before; a delete
    (or a new generation) that lands in between must win. CI once saw a deleted
    deployment come back as Succeeded and stay."""
    from endpoints import services
    from endpoints.models import State
    from endpoints.runner import Runner, Running

    endpoint = Endpoint.objects.create(
        workspace=workspace, name="my-endpoint", compute=workspace.computes.get(name="local"),
        created_by=people.owner,
    )  # fmt: skip
    Deployment.objects.create(endpoint=endpoint, name="blue", type="managed",
                              state=State.SUCCEEDED)  # fmt: skip
    read_before = Deployment.objects.get(name="blue")
    services.delete_deployment(Deployment.objects.get(name="blue"))
    runner = Runner()
    runner.fail(read_before, "ImagePullLoopBackOff", "seen before the delete")
    runner.publish_instances(read_before, Running(generation=1), done=True)
    assert Deployment.objects.get(name="blue").state == State.DELETING

    Deployment.objects.filter(name="blue").update(state=State.UPDATING, generation=2)
    runner.fail(read_before, "ImagePullLoopBackOff", "about generation 1")
    assert Deployment.objects.get(name="blue").state == State.UPDATING


def test_a_routers_counts_wait_out_a_lost_database_and_a_resent_second_counts_once(
    workspace, people
):
    """A router that cannot write its per-second counts (the database, or for a router in
    a cluster the studio, is away) keeps them and sends them when it can; a second whose
    first write went through but was not confirmed is kept once."""
    from endpoints import traffic
    from endpoints.models import TrafficSecond

    endpoint = Endpoint.objects.create(
        workspace=workspace, name="my-endpoint", compute=workspace.computes.get(name="local"),
        created_by=people.owner,
    )  # fmt: skip
    blue = Deployment.objects.create(endpoint=endpoint, name="blue", type="managed")
    recorder = traffic.Recorder()
    outcomes = ["away", "away", "saved, unconfirmed", "fine"]

    def write(router: str, ended: traffic.Ended) -> None:
        outcome = outcomes.pop(0)
        if outcome != "away":
            traffic.save(router, ended)
        if outcome != "fine":
            raise ConnectionError(outcome)

    recorder.write = write

    def one_request(status: int, seconds_ago: int) -> None:
        recorder.started(blue.pk, 1)
        recorder.finished(blue.pk, status, 0.003)
        recorder.second -= seconds_ago  # as if it was then: that second has ended

    recorder.stopping.set()  # no writer thread: flushed here, one at a time
    one_request(200, 10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            recorder.flush()
    assert not TrafficSecond.objects.exists()
    one_request(503, 5)
    with pytest.raises(ConnectionError):
        recorder.flush()  # both seconds written, the answer lost
    assert recorder.flush() == 2  # sent again
    rows = TrafficSecond.objects.filter(deployment=blue, router=recorder.name)
    assert sorted(tuple(r.codes) for r in rows) == [("200",), ("503",)]


async def test_requests_that_find_no_table_share_one_read_and_an_old_one_routes_meanwhile():
    """The router reads an endpoint's table once for all the requests that wait for it,
    routes by the table it has while a newer one is read in the background, and reads
    anew when a change was saved during a read (that read may hold the state before)."""
    import asyncio

    from endpoints import router

    reads: list[str] = []
    release = threading.Event()

    def source(name: str) -> router.Table:
        reads.append(name)
        release.wait(10)
        return router.Table(pk=len(reads), auth_mode="key", key_digests=(), traffic=(),
                            mirror=(), routes={})  # fmt: skip

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.005)

    routing = router.Router()
    routing.source = source
    try:
        waiting = [asyncio.ensure_future(routing.table("e")) for _ in range(20)]
        await until(lambda: bool(reads))
        await asyncio.sleep(0)  # each request has asked by now: they were queued first
        release.set()
        assert {t.pk for t in await asyncio.gather(*waiting)} == {1}
        assert reads == ["e"]
        # Old: this request routes by it; one read starts behind it.
        release.clear()
        routing.tables["e"] = dataclasses.replace(routing.tables["e"], loaded_at=0)
        assert (await routing.table("e")).pk == 1
        assert (await routing.table("e")).pk == 1
        await until(lambda: len(reads) == 2)  # the background read, in its thread
        await asyncio.sleep(0)
        assert reads == ["e", "e"]
        # A change saved while that read runs: the next request that finds no table
        # does not take that read's answer, but one begun after the change.
        routing.forget("e")
        after_change = asyncio.ensure_future(routing.table("e"))
        await until(lambda: len(reads) == 3)
        release.set()
        assert (await after_change).pk == 3
        assert reads == ["e", "e", "e"]
    finally:
        release.set()
        await routing.close()


@pytest.mark.django_db
def test_an_endpoint_name_taken_in_another_workspace_is_not_available_saying_nothing_more(
    workspace, people
):
    from endpoints.services import save_endpoint
    from studio.errors import FieldErrors
    from studio.services import create_workspace

    other = create_workspace("other", owner=people.contributor)
    save_endpoint(other, people.contributor, {"name": "ep-b"})
    with pytest.raises(FieldErrors) as refused:
        save_endpoint(workspace, people.owner, {"name": "ep-b"})
    assert refused.value.errors == [
        ("name", "'ep-b' is not available: endpoint names are unique across the studio")
    ]


ECHO = b"""
import os
def init():
    pass
def run(raw_data):
    return {"key seen": "KSTUDIO_SERVER_KEY" in os.environ}
"""


def test_a_model_server_answers_its_router_alone_not_whoever_finds_its_port(studio):
    """A job of another workspace could read a model server's loopback port from
    /proc/net/tcp and score it with no endpoint key."""
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    uri, auth = serve_script(studio, spec, ECHO)
    # Through the router, with the endpoint's key: answered, and the scoring script does
    # not find the server's key in its environment.
    assert httpx.post(uri, json={}, headers=auth).json() == {"key seen": False}
    (instance,) = Deployment.objects.get(name="blue").instances
    direct = instance["url"]
    for headers in ({}, {"X-Kstudio-Server-Key": "guessed"}, auth):
        refused = httpx.post(direct + "/score", json={}, headers=headers)
        assert refused.status_code == 401, refused.text
        assert httpx.get(direct + "/swagger.json", headers=headers).status_code == 401
    assert httpx.get(direct + "/").text == "Healthy"  # probes need no key


def _closed_to_others(python: str) -> bool:
    from compute.launcher import runnable_by_anyone

    return not runnable_by_anyone(os.path.realpath(python))


needs_closed_python = pytest.mark.skipif(
    os.geteuid() != 0 or UID_BASE <= 0 or not _closed_to_others(sys.executable),
    reason="needs a root studio whose own Python other users cannot run (as on CI)",
)


@needs_closed_python
def test_a_scoring_script_never_runs_as_the_studio_when_its_python_is_closed_to_others(
    studio, settings
):
    """It ran as root when the studio's interpreter sat under /root. Now a deployment
    whose configured Python its own user cannot run does not start, and says why."""
    settings.STUDIO_DEPLOYMENT_UID_BASE = UID_BASE
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    shown = blue_fails(studio, ISOLATED, 60)
    assert "STUDIO_DEPLOYMENT_PYTHON" in shown["reason"], shown
    assert "closed to other users" in shown["reason"]
    assert Deployment.objects.get(name="blue").instances == []


@needs_closed_python
def test_unconfigured_a_model_server_runs_as_its_own_user_on_a_python_others_may_run(
    studio, settings, tmp_path, kstudio
):
    settings.STUDIO_DEPLOYMENT_PYTHON = ""
    settings.STUDIO_DEPLOYMENT_UID_BASE = UID_BASE
    studio_file = tmp_path / "studio-only"
    studio_file.write_text("the studio's")
    studio.post("online-endpoints/", json={"yaml": "name: my-endpoint\n"})
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"},
            "environment_variables": {"STUDIO_FILE": str(studio_file)}}  # fmt: skip
    uri, auth = serve_script(studio, spec, ISOLATED)
    blue = Deployment.objects.get(name="blue")
    assert httpx.post(uri, json={}, headers=auth).json() == {
        "uid": UID_BASE + blue.pk, "studio_file": "PermissionError", "home": True}  # fmt: skip
    said = kstudio("online-deployment", "get-logs", "-n", "blue", "-e", "my-endpoint",
                   "--container", "storage-initializer", check=True).stdout  # fmt: skip
    assert "is closed to other users, so the model server runs on" in said


@pytest.mark.django_db(transaction=True)
def test_two_runners_never_both_run_a_deployment_and_one_takes_over_when_the_other_stops(
    workspace, people, settings
):
    """Two `runcontroller` processes each reconciled every deployment: nothing claimed
    them. A deployment is held by one runner under a lease, as jobs are."""
    from endpoints import services as endpoint_services
    from endpoints.runner import Runner

    settings.STUDIO_DEPLOYMENT_UID_BASE = 0  # as the studio's user: this is about leases
    endpoint_services.save_endpoint(workspace, people.owner, {"name": "my-endpoint"})
    spec = {"name": "blue", "endpoint_name": "my-endpoint",
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    code = archive({"score.py": ECHO})
    endpoint_services.save_deployment(
        workspace, people.contributor, spec, code=code, all_traffic=True
    )
    first, second = Runner(), Runner()
    try:

        def serving() -> bool:
            first.tick()
            second.tick()
            return Deployment.objects.get(name="blue").state == "Succeeded"

        wait_until(serving, 60, "blue to serve")
        blue = Deployment.objects.get(name="blue")
        assert blue.runner == first.name
        assert list(first.running) == [blue.pk] and not second.running and not second.rollouts
        servers = [i["pid"] for i in blue.instances]
        for _ in range(3):  # the other runner, however often it looks, leaves it alone
            second.tick()
        assert not second.running and not second.rollouts

        first.stop_all()  # a clean stop: its servers stop, and its lease is let go

        def taken_over() -> bool:
            second.tick()
            now = Deployment.objects.get(name="blue")
            return now.runner == second.name and now.state == "Succeeded" and bool(second.running)

        wait_until(taken_over, 60, "the second runner to take blue over")
        assert [i["pid"] for i in Deployment.objects.get(name="blue").instances] != servers
    finally:
        first.stop_all()
        second.stop_all()
