"""Online endpoints on a Kubernetes compute target, against the real control plane and its
process kubelet (devcluster): the rendered objects are valid Kubernetes, a deployment becomes a
Deployment + Service + ConfigMap in the attachment's namespace whose pods really serve,
the router reaches them through the API server's service proxy (or, installed in the
cluster, through their Services), an update rolls without a failed request, and pods
that cannot serve are named with Azure's codes."""

from __future__ import annotations

import base64
import collections
import json
import os
import threading
from typing import Any

import httpx
import kubernetes_validate
import pytest

from compute import clusters
from endpoints import kube as endpoint_kube
from endpoints.models import Deployment
from tests.conftest import admin_kubeconfig, code_archive, read_socket, token_for, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

K8S_VERSION = "1.31"

# Standard library only: the fake kubelet runs pods on this host's python3.
SCORE = """
import json, os, time

def init():
    global weight
    if os.environ.get("BREAK_INIT"):
        raise RuntimeError("the model file is corrupt")
    if os.environ.get("EAT_MB"):  # a model bigger than the pod's memory
        global hog
        hog = b"\x01" * (int(os.environ["EAT_MB"]) * 2**20)
        time.sleep(10)
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weight.txt")) as f:
        weight = float(f.read())

def run(raw_data):
    body = json.loads(raw_data)
    time.sleep(body.get("sleep", 0))
    return {"predictions": [weight * x for x in body["data"]], "color": os.environ["COLOR"]}
"""


def deployment_yaml(name: str, color: str, **extra: object) -> str:
    fast = {"initial_delay": 0, "period": 1, "timeout": 1, "failure_threshold": 30}
    document = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/kubernetesOnlineDeployment.schema.json",
        "name": name, "endpoint_name": "k8s-endpoint", "type": "kubernetes",
        "model": {"path": "model"},
        "code_configuration": {"code": "code", "scoring_script": "score.py"},
        "environment_variables": {"COLOR": color},
        "request_settings": {"request_timeout_ms": 5000, "max_queue_wait_ms": 5000,
                             "max_concurrent_requests_per_instance": 4},
        "readiness_probe": fast, "liveness_probe": fast,
        "instance_count": 1, **extra,
    }  # fmt: skip
    return json.dumps(document)


@pytest.fixture
def studio(attached, live_studio, people, kube):
    # Inference granted as IT-ops would; the router inside the cluster only where a test
    # asks for it (the studio's own reaches the pods through the API server).
    settings = ["enableInference=true", "inferenceRouter=false"]
    assert not clusters.install(attached.cluster, settings, admin_kubeconfig(kube)).problems
    http = httpx.Client(
        base_url=f"{live_studio.url}/api/v1/workspaces/demo/",
        headers={"Authorization": f"Bearer {token_for(people.contributor)}"}, timeout=30,
    )  # fmt: skip
    made = http.post(
        "online-endpoints/", json={"yaml": "name: k8s-endpoint\ncompute: azureml:k8s\n"}
    )
    assert made.status_code == 201, made.text
    yield http
    http.close()


def send(http: httpx.Client, name: str, color: str, method: str = "POST", **extra: object):
    path = "online-endpoints/k8s-endpoint/deployments/" + (f"{name}/" if method == "PUT" else "")
    return http.request(
        method, path,
        data={"spec": deployment_yaml(name, color, **extra)},
        files={"code": ("code.tar.gz", code_archive({"score.py": SCORE.encode()})),
               "model_folder": ("model.tar.gz", code_archive({"weight.txt": b"2"}))},
    )  # fmt: skip


def state(http: httpx.Client, name: str) -> dict:
    return http.get(f"online-endpoints/k8s-endpoint/deployments/{name}/").json()


def settled(http: httpx.Client, name: str) -> dict | None:
    shown = state(http, name)
    return shown if shown["provisioning_state"] in ("Succeeded", "Failed") else None


def test_rendered_deployment_objects_are_valid_kubernetes(studio, attached):
    answer = send(studio, "blue", "blue")
    assert answer.status_code == 201, answer.text
    deployment = Deployment.objects.select_related("endpoint__workspace").get(name="blue")
    objects = endpoint_kube.render(deployment, attached)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service", "Secret"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects[1]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["storage-initializer"]
    server = pod["containers"][0]
    assert server["name"] == "inference-server"
    assert server["readinessProbe"]["periodSeconds"] == 1
    assert objects[1]["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    names = {o["metadata"]["name"] for o in objects}
    assert all(n.startswith("ks-k8s-endpoint-blue-") for n in names)
    assert all(o["metadata"]["namespace"] == "team-a" for o in objects)
    # The extension with enableInference lets the studio manage them, and no more.
    from compute import extension, inference

    installed = extension.manifests(attached.cluster, ["team-a"], {"enableInference": True})
    role, reader = [o for o in installed if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "team-a"
    # In kstudio-system: reading the router's Service (its address), nothing else.
    kubernetes_validate.validate(reader, K8S_VERSION, strict=True)
    assert reader["metadata"]["namespace"] == extension.SYSTEM_NAMESPACE
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["services"],
                                "resourceNames": [inference.ROUTER], "verbs": ["get"]}]  # fmt: skip
    kubernetes_validate.validate(role, K8S_VERSION, strict=True)
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert {("apps", "deployments"), ("", "services/proxy")} <= granted
    plain = extension.manifests(attached.cluster, ["team-a"], {"enableInference": False})
    (role,) = [o for o in plain if o["kind"] == "Role"]
    assert ("apps", "deployments") not in {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert not [o for o in plain if o["metadata"]["name"] == inference.ROUTER]
    # The router inside the cluster: HTTPS on a LoadBalancer, three replicas by default.
    router = {o["kind"]: o for o in installed if o["metadata"]["name"] == inference.ROUTER}
    assert set(router) == {"Secret", "Deployment", "Service"}
    for obj in router.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert router["Deployment"]["spec"]["replicas"] == 3
    assert router["Service"]["spec"]["type"] == "LoadBalancer"
    assert router["Service"]["spec"]["ports"][0]["port"] == 443
    command = router["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--self-signed") + 1] == "kstudio-router.kstudio-system.svc"
    insecure = {"enableInference": True, "allowInsecureConnections": True,
                "inferenceRouterHA": False, "inferenceRouterServiceType": "nodePort"}  # fmt: skip
    router = {o["kind"]: o for o in extension.manifests(attached.cluster, [], insecure)
              if o["metadata"]["name"] == inference.ROUTER}  # fmt: skip
    assert router["Deployment"]["spec"]["replicas"] == 1
    assert (router["Service"]["spec"]["type"], router["Service"]["spec"]["ports"][0]["port"]) == (
        "NodePort",
        80,
    )
    command = router["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--self-signed" not in command and "--certfile" not in command


def test_a_deployment_serves_from_pods_and_rolls_an_update_without_a_failed_request(
    studio, kube, attached, live_studio, people
):
    assert send(studio, "blue", "blue").status_code == 201
    shown = wait_until(lambda: settled(studio, "blue"), 90, "blue to serve")
    assert shown["provisioning_state"] == "Succeeded", shown
    name = endpoint_kube.names(Deployment.objects.get(name="blue"))
    made = kube.api.get(kube.api.kind("apps", "deployments"), "team-a", name)
    assert made["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubestudio"
    kube.api.get(kube.api.kind("", "services"), "team-a", name)
    # Its logs are the pod's containers': the model server, and the download step.
    logs = "online-endpoints/k8s-endpoint/deployments/blue/logs/"
    selector = f"{endpoint_kube.DEPLOYMENT_LABEL}={name}"
    (pod,) = kube.api.list(kube.api.kind("", "pods"), "team-a", selector)["items"]
    assert f"model server listening on {kube.listening_address(pod)}:" in studio.get(logs).text
    prepared = studio.get(logs, params={"container": "storage-initializer"}).text
    assert "unpacked code.tar.gz" in prepared and "unpacked model.tar.gz" in prepared
    assert studio.patch(
        "online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}}
    ).is_success
    endpoint = studio.get("online-endpoints/k8s-endpoint/").json()
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    auth = {"Authorization": f"Bearer {keys['primaryKey']}"}
    scored = httpx.post(endpoint["scoring_uri"], json={"data": [1, 2]}, headers=auth, timeout=30)
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"predictions": [2.0, 4.0], "color": "blue"}
    assert scored.headers["azureml-model-deployment"] == "blue"
    # Traffic keeps flowing while blue rolls to a new version of itself.
    codes: collections.Counter[int] = collections.Counter()
    colors: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answer = client.post(endpoint["scoring_uri"], json={"data": [1]}, headers=auth)
                codes[answer.status_code] += 1
                if answer.status_code == 200:
                    colors[answer.json()["color"]] += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        assert send(studio, "blue", "navy", method="PUT").status_code == 200
        rolled = wait_until(
            lambda: (
                (s := state(studio, "blue"))["provisioning_state"] == "Succeeded"
                and s["history"][-1]["generation"] == 2
                and colors["navy"] > 3
            ),
            90,
            "the update to serve",
        )
        assert rolled
    finally:
        stop.set()
        worker.join()
    assert set(codes) == {200}, codes

    def generations(terminating: bool) -> set[str]:
        pods = kube.api.list(kube.api.kind("", "pods"), "team-a", selector)["items"]
        return {
            p["metadata"]["labels"]["kstudio.io/generation"]
            for p in pods
            if terminating or not p["metadata"].get("deletionTimestamp")
        }

    assert generations(terminating=False) == {"2"}
    # The old pod serves on through its preStop pause, then ends.
    wait_until(lambda: generations(terminating=True) == {"2"}, 30, "the old pod to end")
    # Every pod's containers are in the deployment's log store, on its socket.
    (new_pod,) = kube.api.list(kube.api.kind("", "pods"), "team-a", selector)["items"]
    socket = (
        f"{live_studio.url.replace('http', 'ws')}/ws/workspaces/demo/online-endpoints/"
        "k8s-endpoint/deployments/blue/logs/"
    )
    wanted = {
        (pod["metadata"]["name"], "storage-initializer"),
        (pod["metadata"]["name"], "inference-server"),
        (new_pod["metadata"]["name"], "storage-initializer"),
        (new_pod["metadata"]["name"], "inference-server"),
    }
    read = read_socket(
        socket,
        token_for(people.contributor),
        lambda r: wanted <= {(m["instance"], m["container"]) for m in r},
    )
    lines = {(m["instance"], m["container"], m["line"]) for m in read}
    assert (new_pod["metadata"]["name"], "storage-initializer", "unpacked code.tar.gz") in lines
    listening = f"model server listening on {kube.listening_address(new_pod)}:{endpoint_kube.PORT}"
    assert (new_pod["metadata"]["name"], "inference-server", listening) in lines
    assert len({m["seq"] for m in read}) == len(read)  # none twice
    # Each container's log is one stream for as long as it runs, not a request a second.
    reads = [p for m, p in kube.api.requests
             if m == "GET" and p.endswith(f"/pods/{new_pod['metadata']['name']}/log")]  # fmt: skip
    assert 2 <= len(reads) <= 3, reads  # its two containers (and a reconnect at most)
    maps = kube.api.list(
        kube.api.kind("", "configmaps"), "team-a", f"kstudio.io/online-deployment={name}"
    )
    assert [m["metadata"]["name"] for m in maps["items"]] == [f"{name}-2"]  # the old one went
    # Deleting it (its traffic moved away first) removes its objects.
    assert studio.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 0}}).is_success
    assert studio.delete("online-endpoints/k8s-endpoint/deployments/blue/").status_code == 204
    wait_until(
        lambda: not Deployment.objects.filter(name="blue").exists(), 30, "the deployment to go"
    )
    # Foreground deletion: the Deployment goes once its ReplicaSets and pods have.
    wait_until(
        lambda: kube.api.count(kube.api.kind("apps", "deployments"), "team-a") == 0,
        60,
        "its Kubernetes Deployment to go",
    )
    assert kube.api.count(kube.api.kind("", "services"), "team-a") == 0
    left = kube.api.list(kube.api.kind("", "configmaps"), "team-a")["items"]
    assert [m["metadata"]["name"] for m in left] == ["kube-root-ca.crt"]  # every namespace's


def test_a_deployment_deleted_and_made_again_under_its_name_serves_once_the_old_has_gone(
    studio, kube
):
    """Its Kubernetes objects have the same names: made again while the old Deployment is
    still going (foreground deletion waits for its pods' drain), the new one waits for it
    and then serves, rather than being applied onto an object that is being deleted."""
    assert send(studio, "blue", "blue").status_code == 201
    assert wait_until(lambda: settled(studio, "blue"), 90, "blue")["provisioning_state"] == (
        "Succeeded"
    )
    name = endpoint_kube.names(Deployment.objects.get(name="blue"))
    deployments = kube.api.kind("apps", "deployments")
    assert studio.delete("online-endpoints/k8s-endpoint/deployments/blue/").status_code == 204
    wait_until(lambda: not Deployment.objects.filter(name="blue").exists(), 30, "the row to go")
    assert send(studio, "blue", "green").status_code == 201
    old = kube.api.get(deployments, "team-a", name)
    assert old["metadata"].get("deletionTimestamp"), "the old Deployment had gone already"
    shown = wait_until(lambda: settled(studio, "blue"), 120, "the new blue to settle")
    assert shown["provisioning_state"] == "Succeeded", shown
    made = kube.api.get(deployments, "team-a", name)
    assert not made["metadata"].get("deletionTimestamp")
    assert made["metadata"]["uid"] != old["metadata"]["uid"]
    studio.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}})
    endpoint = studio.get("online-endpoints/k8s-endpoint/").json()
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    auth = {"Authorization": f"Bearer {keys['primaryKey']}"}
    scored = httpx.post(endpoint["scoring_uri"], json={"data": [1]}, headers=auth, timeout=30)
    assert scored.status_code == 200 and scored.json()["color"] == "green", scored.text


def test_pods_that_cannot_serve_are_named_with_azures_codes(studio, kube, attached):
    assert send(studio, "broken", "red", environment_variables={"BREAK_INIT": "1",
                "COLOR": "red"}).status_code == 201  # fmt: skip
    shown = wait_until(lambda: settled(studio, "broken"), 90, "the broken deployment to settle")
    assert shown["provisioning_state"] == "Failed"
    assert shown["error_code"] == "UserScriptInitFailed", shown
    assert "the model file is corrupt" in shown["reason"]

    image = {"image": "registry.example/scoring:unpullable"}
    assert send(studio, "nopull", "red", environment=image).status_code == 201
    shown = wait_until(lambda: settled(studio, "nopull"), 60, "the unpullable one to settle")
    assert (shown["error_code"], shown["provisioning_state"]) == ("ImagePullLoopBackOff", "Failed")

    from compute import instance_types

    # In the cluster first, as the studio makes one: a row alone would be dropped by the
    # mirror of the cluster's InstanceType objects at its next list.
    instance_types.save(attached.cluster, "gpu-pool", {"pool": "gpu"},
                        {"requests": {"cpu": "1", "memory": "1Gi"},
                         "limits": {"cpu": "1", "memory": "1Gi"}})  # fmt: skip
    assert send(studio, "waits", "red", instance_type="gpu-pool").status_code == 201
    shown = wait_until(lambda: settled(studio, "waits"), 60, "the unschedulable one to settle")
    assert shown["error_code"] == "PodUnschedulable", shown
    assert "didn't match Pod's node affinity/selector" in shown["reason"]
    # A node that fits arrives (a cluster autoscaler's, say): the deployment serves.
    kube.add_node("gpu-1", {"pool": "gpu"}, cpu="8", memory="32Gi")
    shown = wait_until(
        lambda: (s := state(studio, "waits"))["provisioning_state"] == "Succeeded" and s,
        60,
        "the deployment to serve once a node fits",
    )
    assert shown["error_code"] == ""


def test_a_pod_out_of_memory_and_a_namespace_gone_are_named_with_azures_codes(studio, kube):
    small = {"requests": {"cpu": "100m", "memory": "100Mi"},
             "limits": {"cpu": "1", "memory": "100Mi"}}  # fmt: skip
    eats = {"EAT_MB": "300", "COLOR": "red"}
    assert send(studio, "hungry", "red", resources=small, environment_variables=eats).is_success
    assert send(studio, "blue", "blue").status_code == 201
    shown = wait_until(lambda: settled(studio, "hungry"), 90, "the hungry one to settle")
    assert (shown["provisioning_state"], shown["error_code"]) == ("Failed", "PodOutOfMemory")
    assert "inference-server ran out of memory" in shown["reason"]
    assert wait_until(lambda: settled(studio, "blue"), 90, "blue")["provisioning_state"] == (
        "Succeeded"
    )
    # The attachment's namespace deleted behind the studio's back.
    kube.api.delete(kube.api.kind("", "namespaces"), "", "team-a")
    shown = wait_until(
        lambda: (s := state(studio, "blue"))["provisioning_state"] == "Failed" and s,
        60,
        "blue to fail",
    )
    assert shown["error_code"] == "NamespaceNotFound"
    assert "team-a" in shown["reason"]


def test_a_cluster_without_inference_is_refused_and_a_big_model_is_fetched_by_its_pods(
    attached, live_studio, people, api, settings, kube
):
    client = api(people.contributor)
    base = "/api/v1/workspaces/demo/online-endpoints/"
    endpoint = {"yaml": "name: k8s-endpoint\ncompute: azureml:k8s\n"}
    answer = client.post(base, endpoint, format="json")
    assert answer.status_code == 400
    (error,) = answer.json()["errors"]
    assert error["field"] == "compute" and "enableInference" in error["message"]
    cluster = attached.cluster
    # Inference asks for more rights (Deployments, Services): an admin installs it again.
    settings_given = ["enableInference=true", "inferenceRouter=false"]
    assert not clusters.install(cluster, settings_given, admin_kubeconfig(kube)).problems
    cluster.refresh_from_db()
    assert client.post(base, endpoint, format="json").status_code == 201
    # A model past what a ConfigMap carries: its pods fetch it from the studio, so the
    # studio must be reachable from the cluster, or it is refused by field.
    blob = os.urandom(1024 * 1024)  # 1 MiB that does not compress
    big = {"weight.txt": b"3", "weights.bin": blob}

    def deploy() -> Any:
        return client.post(
            base + "k8s-endpoint/deployments/",
            {"spec": deployment_yaml("blue", "blue"),
             "code": ("code.tar.gz", code_archive({"score.py": SCORE.encode()})),
             "model_folder": ("model.tar.gz", code_archive(big))},
            format="multipart",
        )  # fmt: skip

    studio_url, cluster.studio_url = cluster.studio_url, ""
    cluster.save()
    settings.STUDIO_PUBLIC_URL = ""
    answer = deploy()
    assert answer.status_code == 400
    assert any(e["field"] == "model" and "--studio-url" in e["message"]
               for e in answer.json()["errors"])  # fmt: skip
    assert not Deployment.objects.exists()
    cluster.studio_url = studio_url
    cluster.save()
    assert deploy().status_code == 201
    http = httpx.Client(
        base_url=f"{live_studio.url}/api/v1/workspaces/demo/",
        headers={"Authorization": f"Bearer {token_for(people.contributor)}"}, timeout=30,
    )  # fmt: skip
    shown = wait_until(lambda: settled(http, "blue"), 90, "blue to serve")
    assert shown["provisioning_state"] == "Succeeded", shown
    made = Deployment.objects.get(name="blue")
    config = kube.api.get(kube.api.kind("", "configmaps"), "team-a",
                          f"{endpoint_kube.names(made)}-1")  # fmt: skip
    assert "fetch.json" in config["data"] and not config.get("binaryData")
    prepared = http.get("online-endpoints/k8s-endpoint/deployments/blue/logs/",
                        params={"container": "storage-initializer"}).text  # fmt: skip
    assert "fetched the model (2 files)" in prepared and "fetched the code" in prepared
    http.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}})
    keys = http.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    scored = httpx.post(f"{live_studio.url}/api/v1/endpoint/k8s-endpoint/score",
                        json={"data": [1, 2]},
                        headers={"Authorization": f"Bearer {keys['primaryKey']}"})  # fmt: skip
    assert scored.json() == {"predictions": [3.0, 6.0], "color": "blue"}
    # The generation's token is in a Secret of its own, not the ConfigMap; it opens this
    # deployment's files only, and only for pods.
    assert "token" not in json.loads(config["data"]["fetch.json"])
    rendered = endpoint_kube.render(made, made.endpoint.compute)[-1]
    assert rendered["kind"] == "Secret"
    kubernetes_validate.validate(rendered, K8S_VERSION, strict=True)
    secret = kube.api.get(kube.api.kind("", "secrets"), "team-a", config["metadata"]["name"])
    token = base64.b64decode(secret["data"]["token"]).decode()
    io = f"{live_studio.url}/api/v1/deployment-io/"
    listing = httpx.get(io + "model/files/", headers={"Authorization": f"Bearer {token}"})
    assert sorted(f["path"] for f in listing.json()["files"]) == ["weight.txt", "weights.bin"]
    assert (
        httpx.get(io + "model/files/", headers={"Authorization": "Bearer kdt_forged"}).status_code
        == 401
    )
    assert httpx.get(io + "model/files/..%2F..%2Fartifacts%2Fsecret",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 404  # fmt: skip
    # Deleted, the deployment takes its Secret with it.
    assert http.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 0}}).is_success
    assert http.delete("online-endpoints/k8s-endpoint/deployments/blue/").status_code == 204
    wait_until(lambda: not Deployment.objects.filter(name="blue").exists(), 30, "blue to go")
    assert kube.api.list(kube.api.kind("", "secrets"), "team-a")["items"] == []


def state_of(live_studio, people, endpoint: str, name: str) -> dict:
    path = f"/api/v1/workspaces/demo/online-endpoints/{endpoint}/deployments/{name}/"
    headers = {"Authorization": f"Bearer {token_for(people.contributor)}"}
    return httpx.get(live_studio.url + path, headers=headers).json()


def test_azures_blue_green_example_deploys_to_kubernetes_and_moves_traffic_without_a_failure(
    attached, kube, kstudio, tmp_path, live_studio, people
):
    from pathlib import Path

    from compute import clusters
    from tests.test_endpoints import example_tree, walk_azures_blue_green_example

    compat = Path(__file__).resolve().parents[2] / "shared" / "compat" / "azureml-examples"
    if not compat.is_dir():
        pytest.skip("shared/compat is not beside the checkout")
    # Plain HTTP for the cluster's own router: once the runner reads its Service's address
    # (every 30 s), the scoring URI the CLI calls is that router's, and a self-signed
    # certificate there would fail the example for want of a CA, not of a deployment.
    settings = ["enableInference=true", "environmentCache=true", "allowInsecureConnections=true"]
    outcome = clusters.install(attached.cluster, settings, admin_kubeconfig(kube))
    assert not outcome.problems, outcome.problems
    # The namespace's environment cache is the folder the local example test builds into
    # (the same conda file, the same key): pip runs once per checkout, not per run.
    cache = Path(__file__).resolve().parents[1] / "var" / "test-environments"
    cache.mkdir(parents=True, exist_ok=True)
    volume = kube.claim_folder("team-a", "kstudio-environments")
    volume.rmdir()
    volume.symlink_to(cache)
    tree = example_tree(tmp_path, compat)
    walk_azures_blue_green_example(kstudio, tree, "k8s")
    pods = kube.api.list(kube.api.kind("", "pods"), "team-a", "kstudio.io/deployment=blue")
    serving = [
        p for p in pods["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    assert len(serving) == 2  # (the first generation's pods may still be ending)
    # Green autoscaled under the load (target_utilization): its pods' logs together hold
    # the requests (the CLI shows the first pod's; the API takes ?instance=).
    logs = kstudio("online-deployment", "get-logs", "-n", "green", "-e", "my-endpoint",
                   "--lines", "3", check=True).stdout  # fmt: skip
    green = state_of(live_studio, people, "my-endpoint", "green")
    assert green["history"][0]["what"].startswith("created")
    pods = kube.api.list(kube.api.kind("", "pods"), "team-a", "kstudio.io/deployment=green")
    every = [logs] + [
        httpx.get(f"{live_studio.url}/api/v1/workspaces/demo/online-endpoints/my-endpoint/"
                  f"deployments/green/logs/", params={"instance": i, "lines": 10000},
                  headers={"Authorization": f"Bearer {token_for(people.contributor)}"}).text
        for i in range(len(pods["items"]))
    ]  # fmt: skip
    assert any("POST /score" in text for text in every), every


def test_target_utilization_scales_the_pods_on_the_routers_counts(studio, kube, settings):
    from concurrent.futures import ThreadPoolExecutor

    settings.STUDIO_SCALE_DOWN_POLLS = 2
    scale = {"type": "target_utilization", "min_instances": 1, "max_instances": 2,
             "target_utilization_percentage": 70, "polling_interval": 1}  # fmt: skip
    patient = {"request_timeout_ms": 20000, "max_concurrent_requests_per_instance": 1,
               "max_queue_wait_ms": 20000}  # fmt: skip
    answer = send(studio, "blue", "blue", scale_settings=scale, request_settings=patient)
    assert answer.status_code == 201, answer.text
    assert wait_until(lambda: settled(studio, "blue"), 90, "blue")["provisioning_state"] == (
        "Succeeded"
    )
    studio.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}})
    endpoint = studio.get("online-endpoints/k8s-endpoint/").json()
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    auth = {"Authorization": f"Bearer {keys['primaryKey']}"}
    name = endpoint_kube.names(Deployment.objects.get(name="blue"))
    statuses: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        while state(studio, "blue")["instances_running"] < 2:
            statuses += pool.map(
                lambda _: httpx.post(endpoint["scoring_uri"], json={"data": [1], "sleep": 0.5},
                                     headers=auth, timeout=30).status_code,
                range(2),
            )  # fmt: skip
            assert len(statuses) < 200, "blue never grew to 2 pods"
    assert set(statuses) == {200}
    workload = kube.api.get(kube.api.kind("apps", "deployments"), "team-a", name)
    assert workload["spec"]["replicas"] == 2
    wait_until(lambda: state(studio, "blue")["instances_running"] == 1, 60, "blue to shrink")
    workload = kube.api.get(kube.api.kind("apps", "deployments"), "team-a", name)
    assert workload["spec"]["replicas"] == 1
    # Read back every polling_interval (and its logs every second) from watches, not with
    # requests each time: the Deployment read once before the watch listed; the pods
    # listed by that read and by the watch, then watched (a reconnect at most).
    reads = [p for m, p in kube.api.requests if m == "GET" and p.endswith(f"/deployments/{name}")]
    lists = [p for m, p in kube.api.requests if m == "GET" and p.endswith("team-a/pods")]
    assert len(reads) <= 2 and len(lists) <= 4, (reads, lists)


def test_the_router_inside_the_cluster_scores_through_the_services_over_tls(
    studio, attached, kube, live_studio, tmp_path
):
    """enableInference installs the studio's router in kstudio-system: it reads the
    routing from the studio with the cluster's token, checks the endpoint's keys, sends
    requests to the deployment's Service, serves HTTPS with IT-ops' certificate
    (sslSecret), and its counts reach the studio's charts."""
    import base64
    import ssl
    from pathlib import Path

    from compute import clusters, extension, inference
    from endpoints.models import TrafficSecond
    from endpoints.remote import self_signed
    from endpoints.traffic import RECORDER

    cert, key = self_signed("router.kube.test", tmp_path)
    system = extension.SYSTEM_NAMESPACE
    pem = {"cert.pem": Path(cert).read_bytes(), "key.pem": Path(key).read_bytes()}
    kube.api.create(kube.api.kind("", "secrets"), system, {
        "metadata": {"name": "router-tls"},
        "data": {k: base64.b64encode(v).decode() for k, v in pem.items()},
    })  # fmt: skip
    policies = kube.api.kind("networking.k8s.io", "networkpolicies")
    # No router, no policy: the API server's proxy, which no policy can name, scores.
    assert kube.api.list(policies, "team-a")["items"] == []
    settings = [
        "inferenceRouter=true",
        "inferenceRouterHA=false",
        "sslSecret=router-tls",
        "sslCname=router.kube.test",
    ]
    outcome = clusters.install(attached.cluster, settings, admin_kubeconfig(kube))
    assert not outcome.problems, outcome.problems
    assert send(studio, "blue", "blue").status_code == 201
    shown = wait_until(lambda: settled(studio, "blue"), 90, "blue to settle")
    assert shown["provisioning_state"] == "Succeeded", shown
    studio.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}})
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()

    def router_ready() -> bool:
        pods = kube.api.list(kube.api.kind("", "pods"), system,
                             "app.kubernetes.io/name=kstudio-router")["items"]  # fmt: skip
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for p in pods for c in p["status"].get("conditions") or [])  # fmt: skip

    wait_until(router_ready, 60, "the router pod to be ready")
    # Only the router's pods may open a connection to the model servers: the policy's
    # selectors, asked of the API server, find blue's pods and the router's, nothing else.
    (policy,) = kube.api.list(policies, "team-a")["items"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"] and len(spec["ingress"]) == 1
    (expression,) = spec["podSelector"]["matchExpressions"]
    assert expression["operator"] == "Exists"
    served = kube.api.list(kube.api.kind("", "pods"), "team-a", expression["key"])["items"]
    assert served and all(p["metadata"]["name"].startswith("ks-k8s-endpoint-blue-")
                          for p in served)  # fmt: skip
    everything = kube.api.list(kube.api.kind("", "pods"), "team-a")["items"]
    assert len(everything) == len(served)  # and no job of the namespace is a server
    (peer,) = spec["ingress"][0]["from"]
    namespace_labels = peer["namespaceSelector"]["matchLabels"]
    assert namespace_labels == {"kubernetes.io/metadata.name": system}
    ((key, value),) = peer["podSelector"]["matchLabels"].items()
    assert kube.api.list(kube.api.kind("", "pods"), system, f"{key}={value}")["items"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": inference.ROUTER}
    # The endpoint shows the router's name; its address is the Service's.
    shown = studio.get("online-endpoints/k8s-endpoint/").json()["scoring_uri"]
    assert shown == "https://router.kube.test/api/v1/endpoint/k8s-endpoint/score"
    service = kube.api.get(kube.api.kind("", "services"), system, inference.ROUTER)
    address = service["status"]["loadBalancer"]["ingress"][0]["ip"]
    url = shown.replace("router.kube.test", address)
    # Checked against IT-ops' certificate, for the name it was made for.
    with httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=30) as client:

        def score(key: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {key}"}
            return client.post(url, json={"data": [1, 2]}, headers=auth,
                               extensions={"sni_hostname": "router.kube.test"})  # fmt: skip

        answer = score(keys["primaryKey"])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [2.0, 4.0], "color": "blue"}
        assert answer.headers["azureml-model-deployment"] == "blue"
        assert score("not-the-key").status_code == 401
        assert all(score(keys["secondaryKey"]).status_code == 200 for _ in range(3))
    # Its counts (another process than the studio's router) reach the studio's rows.
    blue = Deployment.objects.get(name="blue")

    def counted() -> int:
        rows = TrafficSecond.objects.filter(deployment=blue).exclude(router=RECORDER.name)
        return sum(row.codes.get("200", 0) for row in rows.exclude(router="autoscaler"))

    wait_until(lambda: counted() >= 4, 30, "the router's counts")
    assert counted() == 4


def test_without_a_cname_the_scoring_uri_is_the_routers_service_address(
    studio, attached, kube, live_studio, monkeypatch
):
    """Azure shows its cluster router's address as the scoring URI: here, as the router's
    Service gives it for each inferenceRouterServiceType (a load balancer's address, a
    node's address and node port, the in-cluster name), and clients score there."""
    from compute import clusters, extension, inference
    from endpoints import runner

    monkeypatch.setattr(runner, "ROUTER_CHECK", 0.2)  # read at once, not every 30 s
    assert send(studio, "blue", "blue").status_code == 201
    shown = wait_until(lambda: settled(studio, "blue"), 90, "blue to settle")
    assert shown["provisioning_state"] == "Succeeded", shown
    studio.patch("online-endpoints/k8s-endpoint/", json={"traffic": {"blue": 100}})
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    system = extension.SYSTEM_NAMESPACE

    def service() -> dict[str, Any]:
        return kube.api.get(kube.api.kind("", "services"), system, inference.ROUTER)

    def uri_becomes(wanted: str) -> None:
        def shown() -> str:
            return studio.get("online-endpoints/k8s-endpoint/").json()["scoring_uri"]

        wait_until(lambda: shown() == wanted, 30, f"the scoring URI {wanted} (now {shown()})")

    def scores(url: str) -> None:
        def answer() -> httpx.Response | None:
            auth = {"Authorization": f"Bearer {keys['primaryKey']}"}
            try:  # refused or cut until a router pod is ready behind the Service
                return httpx.post(url, json={"data": [1]}, headers=auth)
            except httpx.TransportError:
                return None

        answered = wait_until(answer, 60, f"the router to answer at {url}")
        assert answered.status_code == 200, answered.text
        assert answered.json() == {"predictions": [2.0], "color": "blue"}

    settings = ["inferenceRouter=true", "inferenceRouterHA=false", "allowInsecureConnections=true"]
    admin = admin_kubeconfig(kube)
    assert not clusters.install(attached.cluster, settings, admin).problems
    ingress = wait_until(lambda: (service().get("status") or {}).get("loadBalancer", {})
                         .get("ingress"), 30, "the load balancer's address")  # fmt: skip
    url = f"http://{ingress[0]['ip']}/api/v1/endpoint/k8s-endpoint/score"
    uri_becomes(url)
    scores(url)

    attached.cluster.refresh_from_db()
    settings = ["inferenceRouterServiceType=nodePort"]
    assert not clusters.install(attached.cluster, settings, admin).problems
    spec = wait_until(lambda: (s := service()["spec"])["type"] == "NodePort" and s, 30, "NodePort")
    node_port = spec["ports"][0]["nodePort"]
    node = kube.api.list(kube.api.kind("", "nodes"), "")["items"][0]
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    url = f"http://{address}:{node_port}/api/v1/endpoint/k8s-endpoint/score"
    uri_becomes(url)
    scores(url)

    attached.cluster.refresh_from_db()
    settings = ["inferenceRouterServiceType=clusterIP"]
    assert not clusters.install(attached.cluster, settings, admin).problems
    uri_becomes("http://kstudio-router.kstudio-system.svc/api/v1/endpoint/k8s-endpoint/score")


def test_a_routers_token_opens_its_own_clusters_endpoints_and_nothing_else(
    studio, attached, live_studio, people
):
    from compute import inference

    assert studio.post("online-endpoints/", json={"yaml": "name: local-endpoint\n"}).is_success
    keys = studio.post("online-endpoints/k8s-endpoint/get-credentials/").json()
    base = f"{live_studio.url}/api/v1/router/"
    router = {"Authorization": f"Bearer {inference.router_token(attached.cluster)}"}
    table = httpx.get(base + "endpoints/k8s-endpoint/", headers=router)
    assert table.status_code == 200
    assert len(table.json()["key_digests"]) == 2
    assert keys["primaryKey"] not in table.text and keys["secondaryKey"] not in table.text
    # An endpoint on another compute, a forged token, a person's token: nothing.
    assert httpx.get(base + "endpoints/local-endpoint/", headers=router).status_code == 404
    forged = {"Authorization": f"Bearer krt_{attached.cluster.pk}:forged"}
    refused = httpx.get(base + "endpoints/k8s-endpoint/", headers=forged)
    assert refused.status_code == 401 and 'realm="router"' in refused.headers["www-authenticate"]
    person = {"Authorization": f"Bearer {token_for(people.owner)}"}
    assert httpx.get(base + "endpoints/k8s-endpoint/", headers=person).status_code == 401
    # Counts: checked by field; those of deployments not on its cluster are dropped.
    second = {"at": "2026-11-29T10:00:00Z", "deployment": 999999, "codes": {"200": 1},
              "latency": [0] * 17, "busy": 1, "replicas": 1}  # fmt: skip
    kept = httpx.post(base + "traffic/", headers=router, json={"router": "r", "seconds": [second]})
    assert kept.json() == {"kept": 0}
    bad = httpx.post(base + "traffic/", headers=router,
                     json={"router": "r", "seconds": [{**second, "latency": [0]}]})  # fmt: skip
    assert bad.status_code == 400 and "seconds" in bad.text
