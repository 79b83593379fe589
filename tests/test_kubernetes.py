"""Kubernetes compute, driven with the official client against the real control plane of
devcluster (kube-apiserver, etcd, controllers, scheduler; our process kubelet runs each
pod), through the fault proxy of tests/faults where a test needs a fault."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import uuid
from typing import Any

import kubernetes_validate
import pytest
import yaml
from django.db import connection

from compute.backends.base import LaunchSpec
from compute.backends.kubernetes import object_name, render
from compute.models import Cluster, ComputeTarget, InstanceType
from devcluster.network import NSS_WRAPPER
from jobs import services
from jobs.models import Job
from jobs.spec import SpecError
from tests.conftest import admin_kubeconfig, code_archive, register, token_for, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

K8S_VERSION = "1.31"


def bundle_files(secret: dict[str, Any]) -> dict[str, str]:
    """A job's Secret (its launcher, launch file and small uploads), as text."""
    return {k: base64.b64decode(v).decode("latin-1") for k, v in secret["data"].items()}


def finished(job: Job, timeout: float = 60) -> Job:
    def ended() -> Job | None:
        job.refresh_from_db()
        return job if job.is_terminal else None

    return wait_until(ended, timeout, f"job {job.name} to end")


def lines_of(job: Job) -> list[str]:
    return list(job.log_lines.order_by("seq").values_list("line", flat=True))


# -- clusters ------------------------------------------------------------------------------
def test_a_cluster_is_registered_with_its_credentials_encrypted_and_never_shown(api, people, kube):
    assert register(api, people.contributor, kube).status_code == 403
    made = register(api, people.it_ops, kube)
    assert made.status_code == 201, made.content
    assert made.json()["server"] == kube.url
    with connection.cursor() as cursor:
        cursor.execute("SELECT kubeconfig FROM compute_cluster")
        stored = cursor.fetchone()[0]
    assert kube.secret not in stored and "clusters" not in stored  # encrypted at rest
    assert Cluster.objects.get().kubeconfig.count(kube.secret) == 1  # and readable back

    shown = api(people.it_ops).get("/api/v1/clusters/lab/")
    assert kube.secret not in shown.content.decode()
    status = shown.json()["status"]
    assert status["reachable"] and status["version"] == kube.api.git_version, status
    assert "create jobs" in status["allowed"] and status["nodes_ready"] == 1
    listed = api(people.it_ops).get("/api/v1/clusters/").content.decode()
    assert "lab" in listed and kube.secret not in listed


def test_show_says_in_words_when_a_cluster_is_unreachable_unauthorized_or_limited(
    api, people, kube
):
    config = kube.kubeconfig(token="wrong")
    body = {"name": "badtoken", "kubeconfig": yaml.safe_dump(config)}
    assert api(people.it_ops).post("/api/v1/clusters/", body, format="json").status_code == 201
    status = api(people.it_ops).get("/api/v1/clusters/badtoken/").json()["status"]
    assert not status["reachable"] and status["message"].startswith("unauthorized")

    config = kube.kubeconfig()
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # nothing listens
    body = {"name": "gone", "kubeconfig": yaml.safe_dump(config)}
    assert api(people.it_ops).post("/api/v1/clusters/", body, format="json").status_code == 201
    status = api(people.it_ops).get("/api/v1/clusters/gone/").json()["status"]
    assert not status["reachable"] and status["message"].startswith("unreachable")

    kube.api.forbidden.add(("create", "jobs"))
    register(api, people.it_ops, kube)
    status = api(people.it_ops).get("/api/v1/clusters/lab/").json()["status"]
    assert "create jobs" in status["denied"] and "watch pods" in status["allowed"]


def test_a_cluster_that_stops_answering_is_given_up_on_in_words(api, people, kube, monkeypatch):
    from compute import kube as kube_client

    monkeypatch.setattr(kube_client, "REQUEST_TIMEOUT", (2, 0.5))
    # Connections are taken (the kernel's backlog) but never answered: a hung API server.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hung:
        config = kube.kubeconfig()
        config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{hung.getsockname()[1]}"
        body = {"name": "hung", "kubeconfig": yaml.safe_dump(config)}
        answer = api(people.it_ops).post("/api/v1/clusters/", body, format="json")
        assert answer.status_code == 201, answer.content
        status = api(people.it_ops).get("/api/v1/clusters/hung/").json()["status"]
    assert not status["reachable"]
    assert status["message"].startswith("unreachable") and "timed out" in status["message"]


def test_a_bad_kubeconfig_is_refused_naming_the_field(api, people, kube):
    bad = api(people.it_ops).post(
        "/api/v1/clusters/", {"name": "x", "kubeconfig": "a: [b"}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "kubeconfig"
    wrong_context = register(api, people.it_ops, kube, context="prod")
    assert wrong_context.status_code == 400
    assert wrong_context.json()["errors"][0] == {
        "field": "context",
        "message": "'prod' is not in the kubeconfig (it has: devcluster)",
    }
    assert not Cluster.objects.exists()
    # Credential plugins and file paths would run programs or read files on the studio's
    # host: refused by field.
    for field, value in (
        ("exec", {"command": "sh", "args": ["-c", "cat /etc/shadow"]}),
        ("tokenFile", "/etc/shadow"),
    ):
        config = kube.kubeconfig()
        config["users"][0]["user"] = {field: value}
        body = {"name": "x", "kubeconfig": yaml.safe_dump(config)}
        refused = api(people.it_ops).post("/api/v1/clusters/", body, format="json")
        assert refused.status_code == 400
        assert (
            f"users[0].user.{field} would make the studio read a file or run a program"
            in (refused.json()["errors"][0]["message"])
        )
    assert not Cluster.objects.exists()


def test_attaching_checks_the_namespace_or_creates_it(api, people, kube):
    assert register(api, people.it_ops, kube).status_code == 201
    url = "/api/v1/workspaces/demo/computes/"
    body = {"name": "k8s", "type": "kubernetes", "cluster": "lab", "namespace": "team-a"}
    missing = api(people.it_ops).post(url, body, format="json")
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["field"] == "namespace"
    assert "does not exist" in missing.json()["errors"][0]["message"]
    azure = api(people.it_ops).post(url, {**body, "identity": {"type": "system"}}, format="json")
    assert azure.status_code == 400 and azure.json()["errors"][0]["field"] == "identity"
    assert not ComputeTarget.objects.filter(name="k8s").exists()

    made = api(people.it_ops).post(url, {**body, "create_namespace": True}, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["cluster"] == "lab" and made.json()["namespace"] == "team-a"
    kube.api.get(kube.api.kind("", "namespaces"), "", "team-a")  # made in the cluster
    default = api(people.it_ops).post(
        url, {"name": "k8s-default", "type": "kubernetes", "cluster": "lab"}, format="json"
    )
    assert default.status_code == 201 and default.json()["namespace"] == "default"

    refused = api(people.it_ops).delete("/api/v1/clusters/lab/")
    assert refused.status_code == 409 and "demo/k8s" in refused.json()["detail"]


def registered_with_the_cli(kstudio: Any, people: Any, kube: Any, tmp_path: Any) -> dict:
    """Cluster `lab` registered by IT-ops with `kstudio cluster create`; returns the
    environment that makes kstudio act as IT-ops."""
    it_ops = {"KSTUDIO_TOKEN": token_for(people.it_ops)}
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump(kube.kubeconfig()))
    kstudio("cluster", "create", "--name", "lab", "--kubeconfig", str(config), check=True, **it_ops)
    return it_ops


# -- rendering -----------------------------------------------------------------------------
def test_rendered_objects_are_valid_kubernetes():
    spec = LaunchSpec(
        job_key="1/quirky_Name_42",
        job_id=7,
        name="quirky_Name_42",
        command="python train.py",
        code={"artifact": "x", "filename": "code.tar.gz", "key": "code"},
        inputs={},
        outputs={"model": {"type": "uri_folder"}},
        environment_variables={"A": "1"},
        timeout=600,
        requests={"cpu": "500m", "memory": "1Gi"},
        limits={"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1},
        node_selector={"pool": "gpu"},
        job_token="kjt_x",
    )
    name = object_name(spec.job_key, spec.name)
    assert len(name) <= 63 and name == object_name(spec.job_key, spec.name)
    assert name != object_name("2/quirky_Name_42", spec.name)  # another workspace's job
    job, bundle = render(
        spec, name, "team-a", "http://studio", "python:3.11-slim", {},
        image_pull_secret="registry-creds",
    )  # fmt: skip
    for obj in (job, bundle):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # The launch file, with the job's token, is in a Secret; the Job shows no token.
    assert bundle["kind"] == "Secret" and "kjt_x" not in json.dumps(job)
    assert json.loads(bundle_files(bundle)["launch.json"])["studio"]["token"] == "kjt_x"
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["backoffLimit"] == 0


# -- jobs ----------------------------------------------------------------------------------
JOB = """\
command: >-
  python main.py ${{inputs.words}} &&
  python main.py ${{inputs.words}} > ${{outputs.model}}/m.txt &&
  echo done
code: src
compute: azureml:k8s
inputs: {words: {type: uri_file, path: ./words.txt}}
outputs: {model: {type: uri_folder}}
"""


def test_a_job_runs_as_a_kubernetes_job_with_logs_and_outputs(
    attached, workspace, people, api, kube
):
    uploads = {
        "code": services.Upload(code_archive(), "code.tar.gz"),
        "inputs.words": services.Upload(io.BytesIO(b"hello pods\n"), "words.txt"),
    }
    job = services.submit_yaml(workspace, people.contributor, JOB, uploads)
    job = finished(job)
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["HELLO PODS", "done"]
    # Small uploads travel in the job's Secret: the pod fetched nothing from the studio.
    files = bundle_files(kube.api.get(kube.api.kind("", "secrets"), "team-a", job.runtime["name"]))
    assert set(files) == {"launcher.py", "launch.json", "upload-code", "upload-inputs.words"}
    assert json.loads(files["launch.json"])["code"] == {"embedded": "upload-code"}
    made = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", job.runtime["name"])
    assert made["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubestudio"
    kubernetes_validate.validate(
        {k: v for k, v in made.items() if k != "status"}, K8S_VERSION, strict=False
    )
    response = api(people.reader).get(
        f"/api/v1/workspaces/demo/jobs/{job.name}/outputs/model/m.txt"
    )
    assert response.status_code == 200 and b"".join(response) == b"HELLO PODS\n"
    history = list(job.status_changes.values_list("status", flat=True))
    assert history[-3:] == ["Running", "Finalizing", "Completed"]


def test_an_unschedulable_job_waits_queued_saying_why_and_runs_once_a_node_fits(
    attached, workspace, people, kube
):
    text = "command: echo fitted\ncompute: azureml:k8s\nresources: {instance_type: big}\n"
    from compute import instance_types

    # Made as the studio makes one, in the cluster first: a row alone would be dropped by
    # the studio's mirror of the cluster's InstanceType objects when it next lists them.
    fitted = {"cpu": "8", "memory": "4Gi"}
    instance_types.save(attached.cluster, "big", {"pool": "gpu"},
                        {"requests": fitted, "limits": fitted})  # fmt: skip
    job = services.submit_yaml(workspace, people.contributor, text, {})

    def waiting() -> bool:
        job.refresh_from_db()
        return job.status == "Queued" and "nodes are available" in job.waiting_reason

    wait_until(waiting, 30, "the job to wait with the scheduler's reason")
    assert "didn't match Pod's node affinity/selector" in job.waiting_reason
    kube.add_node("gpu-1", {"pool": "gpu"}, cpu="16", memory="64Gi")
    job = finished(job)
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["fitted"]


def test_a_jobs_token_travels_in_a_secret_and_reaches_its_pod(attached, workspace, people, kube):
    text = "command: echo ${MLFLOW_TRACKING_TOKEN:0:4} ${#MLFLOW_TRACKING_TOKEN}\n"
    text += "compute: azureml:k8s\n"
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", job.failure_reason
    bundle = kube.api.get(kube.api.kind("", "secrets"), "team-a", job.runtime["name"])
    token = json.loads(bundle_files(bundle)["launch.json"])["studio"]["token"]
    assert lines_of(job) == [f"kjt_ {len(token)}"]  # MLflow's token, as the pod has it
    configmaps = kube.api.list(kube.api.kind("", "configmaps"), "team-a")["items"]
    # Every namespace has the cluster's CA (the root CA publisher's); the job made none.
    assert [c["metadata"]["name"] for c in configmaps] == ["kube-root-ca.crt"]
    made = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", job.runtime["name"])
    assert token not in json.dumps(made)


def test_cancel_deletes_the_kubernetes_job(attached, workspace, people, kube):
    text = "command: echo started; sleep 60\ncompute: azureml:k8s\n"
    job = services.submit_yaml(workspace, people.contributor, text, {})
    wait_until(lambda: lines_of(job) == ["started"], 30, "the job to start")
    services.cancel(job)
    job = finished(job)
    assert job.status == "Canceled"
    jobs = kube.api.list(kube.api.kind("batch", "jobs"), "team-a")["items"]
    assert jobs == []  # deleted, its pods and Secret with it
    assert kube.api.list(kube.api.kind("", "secrets"), "team-a")["items"] == []


def test_a_failing_command_fails_the_job_with_its_exit_code(attached, workspace, people):
    job = services.submit_yaml(
        workspace, people.contributor, "command: echo no >&2; exit 3\ncompute: azureml:k8s\n", {}
    )
    job = finished(job)
    assert job.status == "Failed"
    assert job.exit_code == 3 and "exited with code 3" in job.failure_reason
    assert lines_of(job) == ["no"]


def test_it_ops_register_check_and_attach_a_cluster_with_the_cli(kstudio, people, kube, tmp_path):
    it_ops = {"KSTUDIO_TOKEN": token_for(people.it_ops)}
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump(kube.kubeconfig()))
    made = kstudio("cluster", "create", "--name", "lab", "--kubeconfig", str(config), **it_ops)
    assert made.returncode == 0, made.stderr
    assert kube.secret not in made.stdout
    shown = kstudio("cluster", "show", "lab", **it_ops)
    assert "reachable    yes" in shown.stdout and kube.api.git_version in shown.stdout
    as_json = json.loads(kstudio("cluster", "show", "lab", "-o", "json", **it_ops).stdout)
    assert as_json["status"]["nodes_ready"] == 1 and "kubeconfig" not in as_json

    refused = kstudio("compute", "attach", "--name", "k8s", "--cluster", "lab",
                      "--namespace", "team-b", **it_ops)  # fmt: skip
    assert refused.returncode == 2 and "ERROR: namespace: 'team-b' does not exist" in refused.stderr
    azure = tmp_path / "compute.yml"
    azure.write_text("name: k8s\ntype: kubernetes\nnamespace: team-b\n")
    attached = kstudio("compute", "attach", "-f", str(azure), "--cluster", "lab",
                       "--create-namespace", "-o", "json", **it_ops)  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    assert json.loads(attached.stdout)["namespace"] == "team-b"
    in_use = kstudio("cluster", "delete", "lab", **it_ops)
    assert in_use.returncode == 1 and "detach them first" in in_use.stderr
    assert kstudio("compute", "detach", "k8s", **it_ops).returncode == 0
    assert kstudio("cluster", "delete", "lab", **it_ops).returncode == 0
    denied = kstudio("cluster", "list")  # a data scientist
    assert denied.returncode == 1 and "Only IT-ops" in denied.stderr


# -- faults -------------------------------------------------------------------------------------
def test_throttling_and_server_errors_are_retried_and_forbidden_is_said(
    attached, workspace, people, faults
):
    faults.fail_next("POST", r"/jobs$", 500)
    faults.fail_next("POST", r"/secrets$", 429)
    job = finished(services.submit_yaml(workspace, people.contributor, JOB_ECHO, {}))
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["hello"]
    made = [m for m, p in faults.requests if m == "POST" and p.endswith(("/jobs", "/secrets"))]
    assert len(made) >= 4  # each refused once, then made

    said = (
        'jobs.batch is forbidden: User "system:serviceaccount:kstudio-system:kstudio" '
        'cannot create resource "jobs" in API group "batch" in the namespace "team-a"'
    )
    faults.fail_next("POST", r"/jobs$", 403, times=None, message=said)
    job = finished(services.submit_yaml(workspace, people.contributor, JOB_ECHO, {}))
    assert job.status == "Failed"
    assert "forbidden" in job.failure_reason and "jobs" in job.failure_reason


JOB_ECHO = "command: echo hello\ncompute: azureml:k8s\n"
TICKS = "command: for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done\ncompute: azureml:k8s\n"


def test_watches_resume_after_a_dropped_connection_and_relist_after_410(
    attached, workspace, people, faults
):
    job = services.submit_yaml(workspace, people.contributor, TICKS, {})
    wait_until(lambda: len(lines_of(job)) >= 2, 30, "the first lines")
    faults.interrupt_watches()  # a blip: resume from the last resourceVersion
    wait_until(lambda: len(lines_of(job)) >= 4, 30, "more lines")
    faults.interrupt_watches(expire=True)  # and one that outlived the history: 410
    job = finished(job)
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == [f"tick {i}" for i in range(1, 7)]  # none lost, none twice
    watches = [p for m, p in faults.requests if m == "GET" and p.endswith("/pods")]
    assert len(watches) >= 4  # list, watch, resumed watch, relist (+ watch)


def test_an_evicted_pod_is_replaced_instead_of_failing_the_job(attached, workspace, people, kube):
    text = "command: echo up; sleep 1.5; echo finished\ncompute: azureml:k8s\n"
    job = services.submit_yaml(workspace, people.contributor, text, {})
    wait_until(lambda: lines_of(job) == ["up"], 30, "the first pod to run")
    first = kube.api.list(kube.api.kind("", "pods"), "team-a")["items"][0]["metadata"]["name"]
    kube.evict("team-a", first)
    job = finished(job)
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["up", "up", "finished"]  # the first pod's line, then the new one's
    pods = kube.api.list(kube.api.kind("", "pods"), "team-a")["items"]
    assert len(pods) == 2


@pytest.mark.both_modes  # leases: SQLite's and PostgreSQL's locking differ
def test_a_restarted_controller_adopts_running_jobs_without_losing_or_repeating_lines(
    workspace, people, kube
):
    from compute import backends, clusters

    cluster = clusters.register("lab", yaml.safe_dump(kube.kubeconfig()))
    clusters.attach(workspace, "k8s", cluster, "team-a", create_namespace=True)
    job = services.submit_yaml(workspace, people.contributor, TICKS, {})

    first = controller_thread("first")
    wait_until(lambda: len(lines_of(job)) >= 2, 30, "the first lines")
    first.stop()
    with backends._lock:  # a new process: no backend, watch or log follower survives
        for backend in backends._built.values():
            backend.close()
        backends._built.clear()
    second = controller_thread("second")
    try:
        job = finished(job)
    finally:
        second.stop()
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == [f"tick {i}" for i in range(1, 7)]
    assert len(kube.api.list(kube.api.kind("batch", "jobs"), "team-a")["items"]) == 1
    assert (
        job.lease_owner == ""
        and Job.objects.get(pk=job.pk).status_changes.filter(status="Running").count() == 1
    )


class controller_thread:
    """A controller in a thread of its own, stopped cleanly (as on SIGTERM); its event
    loop is closed at the end, as a process's would be."""

    def __init__(self, name: str) -> None:
        import asyncio
        import threading

        from jobs.controller import Controller

        self.controller = Controller(name=name)
        self.started = threading.Event()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stopping = asyncio.Event()
            self.started.set()
            await self.controller.run(self.stopping)

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self.thread.start()
        self.started.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)


# -- the extension -----------------------------------------------------------------------------
def test_the_extension_installs_idempotently_and_uninstalls_only_what_it_made(
    kstudio, people, kube, tmp_path
):
    it_ops = registered_with_the_cli(kstudio, people, kube, tmp_path)
    kstudio("compute", "attach", "--name", "k8s", "--cluster", "lab", "--namespace", "team-a",
            "--create-namespace", check=True, **it_ops)  # fmt: skip

    printed = kstudio("cluster", "manifests", "lab", check=True, **it_ops).stdout
    objects = list(yaml.safe_load_all(printed))
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    kinds = [
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects
    ]
    assert ("CustomResourceDefinition", "", "instancetypes.kstudio.io") in kinds
    assert ("Role", "team-a", "kstudio") in kinds and ("Namespace", "", "team-a") in kinds

    first = kstudio("cluster", "install", "lab", "--set", "nodeSelector.pool=cpu",
                    "-o", "json", **it_ops)  # fmt: skip
    assert first.returncode == 0, first.stderr
    outcomes = {a["name"]: a["outcome"] for a in json.loads(first.stdout)["applied"]}
    assert outcomes["instancetypes.kstudio.io"] == "created"
    assert outcomes["team-a"] == "exists (left as it was)"  # attach made it
    assert Cluster.objects.get().settings["nodeSelector"] == {"pool": "cpu"}
    # Once installed the studio holds only its own token: acts on its rights take an
    # admin's kubeconfig.
    refused = kstudio("cluster", "install", "lab", **it_ops)
    assert refused.returncode == 2 and "kubeconfig" in refused.stderr
    admin = ("--kubeconfig", str(tmp_path / "kubeconfig"))
    again = json.loads(kstudio("cluster", "install", "lab", *admin, "-o", "json", **it_ops).stdout)
    assert {a["outcome"] for a in again["applied"]} <= {"unchanged", "exists (left as it was)"}
    role = kube.api.get(kube.api.kind("rbac.authorization.k8s.io", "clusterroles"), "", "kstudio")
    managers = {field["manager"] for field in role["metadata"]["managedFields"]}
    assert managers == {"kubestudio"}  # server-side apply, our field manager

    bad = kstudio("cluster", "install", "lab", "--set", "inferenceRouterServiceType=ingress",
                  **it_ops)  # fmt: skip
    assert bad.returncode == 2 and "set.inferenceRouterServiceType" in bad.stderr
    bad = kstudio("cluster", "install", "lab", "--set", "enableInference=true",
                  "--set", "sslSecret=Not_A_Secret", **it_ops)  # fmt: skip
    assert bad.returncode == 2 and "set.sslSecret" in bad.stderr
    assert not Cluster.objects.get(name="lab").settings.get("sslSecret")  # nothing kept

    removed = json.loads(
        kstudio("cluster", "uninstall", "lab", *admin, "-o", "json", **it_ops).stdout
    )
    outcomes = {a["name"]: a["outcome"] for a in removed["removed"]}
    assert outcomes["instancetypes.kstudio.io"] == "deleted"
    assert outcomes["team-a"] == "kept" and outcomes["kstudio-system"] == "deleted"
    kube.api.get(kube.api.kind("", "namespaces"), "", "team-a")  # the users' work stays


def test_install_preflight_lists_problems_and_applies_nothing(api, people, kube):
    # Registered with credentials that may not patch ClusterRoles.
    kube.api.forbidden.add(("patch", "clusterroles"))
    assert register(api, people.it_ops, kube).status_code == 201
    foreign = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "instancetypes.kstudio.io"},
               "spec": {"group": "kstudio.io", "scope": "Cluster",
                        "versions": [{"name": "v1", "served": True, "storage": True,
                                      "schema": {"openAPIV3Schema": {"type": "object"}}}],
                        "names": {"plural": "instancetypes", "kind": "InstanceType"}}}  # fmt: skip
    kube.api.create(kube.api.kind("apiextensions.k8s.io", "customresourcedefinitions"), "", foreign)
    result = api(people.it_ops).post("/api/v1/clusters/lab/install/", {}, format="json").json()
    assert result["applied"] == []
    assert any("may not apply ClusterRole kstudio" in p for p in result["problems"])
    assert any("is not the studio's" in p for p in result["problems"])
    roles = kube.api.list(kube.api.kind("rbac.authorization.k8s.io", "clusterroles"), "")
    assert "kstudio" not in {role["metadata"]["name"] for role in roles["items"]}


# -- instance types --------------------------------------------------------------------------
AZURE_LIST = """\
apiVersion: amlarc.azureml.com/v1alpha1
kind: InstanceTypeList
items:
  - metadata:
      name: cpusmall
    spec:
      resources:
        requests:
          cpu: "100m"
          memory: "100Mi"
        limits:
          cpu: "1"
          nvidia.com/gpu: 0
          memory: "1Gi"
  - metadata:
      name: defaultinstancetype
    spec:
      resources:
        requests:
          cpu: "1"
          memory: "1Gi"
        limits:
          cpu: "1"
          nvidia.com/gpu: 0
          memory: "1Gi"
"""
AZURE_ONE = """\
apiVersion: amlarc.azureml.com/v1alpha1
kind: InstanceType
metadata:
  name: myinstancetypename
spec:
  nodeSelector:
    mylabel: mylabelvalue
  resources:
    limits:
      cpu: "1"
      nvidia.com/gpu: 1
      memory: "2Gi"
    requests:
      cpu: "700m"
      memory: "1500Mi"
"""


def kubectl(kube: Any, *args: str, text: str = "") -> Any:
    """The real kubectl, as cluster admin, on the test's cluster."""
    import subprocess

    return subprocess.run(
        [str(kube.cluster.binaries / "kubectl"), "--kubeconfig", str(kube.cluster.kubeconfig_path),
         *args], input=text, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_crd_schema_takes_azures_examples_and_refuses_what_azure_refuses(kube):
    from compute import extension

    # Azure's own group, so that Azure's files apply as they are.
    made = kubectl(kube, "apply", "-f", "-", text=json.dumps(extension.crd("amlarc.azureml.com")))
    assert made.returncode == 0, made.stderr
    kubectl(kube, "wait", "--for=condition=Established",
            "crd/instancetypes.amlarc.azureml.com", "--timeout=30s")  # fmt: skip
    for text in (AZURE_ONE, AZURE_LIST):
        applied = kubectl(kube, "apply", "-f", "-", text=text)
        assert applied.returncode == 0, applied.stderr
    listed = kubectl(kube, "get", "instancetypes.amlarc.azureml.com", "-o", "name").stdout
    assert "instancetype.amlarc.azureml.com/myinstancetypename" in listed.split()
    bad = yaml.safe_load(AZURE_ONE)
    del bad["spec"]["resources"]["requests"]["memory"]
    refused = kubectl(kube, "apply", "-f", "-", text=yaml.safe_dump(bad))
    assert refused.returncode != 0
    assert "spec.resources.requests.memory: Required value" in refused.stderr
    bad = yaml.safe_load(AZURE_ONE)
    bad["metadata"]["name"] = "withgpurequest"
    bad["spec"]["resources"]["requests"]["nvidia.com/gpu"] = 1
    refused = kubectl(kube, "apply", "-f", "-", text=yaml.safe_dump(bad))
    assert refused.returncode != 0  # kubectl's strict field validation, on the server
    assert 'unknown field "spec.resources.requests.nvidia.com/gpu"' in refused.stderr
    bad["spec"]["resources"]["requests"].pop("nvidia.com/gpu")
    bad["spec"]["resources"]["limits"]["cpu"] = "0"
    refused = kubectl(kube, "apply", "-f", "-", text=yaml.safe_dump(bad))
    assert refused.returncode != 0 and "cpu must not be zero" in refused.stderr


def test_instance_types_live_in_their_cluster_both_ways(kstudio, people, kube, tmp_path):
    it_ops = registered_with_the_cli(kstudio, people, kube, tmp_path)
    early = tmp_path / "early.yml"
    early.write_text(AZURE_LIST)
    missing = kstudio("instance-type", "create", "-f", str(early), "--cluster", "lab", **it_ops)
    assert missing.returncode != 0 and "extension is not installed" in missing.stderr
    kstudio("cluster", "install", "lab", check=True, **it_ops)
    listed = json.loads(kstudio("instance-type", "list", "--cluster", "lab", "-o", "json").stdout)
    assert [(i["name"], i["origin"]) for i in listed] == [("defaultinstancetype", "builtin")]

    files = tmp_path / "list.yml"
    files.write_text(AZURE_LIST)
    made = kstudio("instance-type", "create", "-f", str(files), "--cluster", "lab", **it_ops)
    assert made.returncode == 0, made.stderr
    kinds = kube.api.kind("kstudio.io", "instancetypes")
    in_cluster = {o["metadata"]["name"] for o in kube.api.list(kinds, "")["items"]}
    assert in_cluster == {"cpusmall", "defaultinstancetype"}

    # Made with kubectl: in the studio within seconds (the controller's watch).
    one = yaml.safe_load(AZURE_ONE)
    one["apiVersion"] = "kstudio.io/v1alpha1"
    kube.api.create(kinds, "", one)

    def names() -> set[str]:
        out = kstudio("instance-type", "list", "--cluster", "lab", "-o", "json").stdout
        return {i["name"] for i in json.loads(out)}

    wait_until(lambda: "myinstancetypename" in names(), 15, "the kubectl-made instance type")
    # Deleting the default object falls back to the built-in default.
    deleted = kstudio(
        "instance-type", "delete", "defaultinstancetype", "--cluster", "lab", **it_ops
    )
    assert deleted.returncode == 0, deleted.stderr
    default = InstanceType.objects.get(cluster__name="lab", name="defaultinstancetype")
    assert default.origin == "builtin" and default.resources["requests"]["cpu"] == "100m"
    kube.api.delete(kinds, "", "myinstancetypename")  # kubectl delete
    wait_until(lambda: "myinstancetypename" not in names(), 15, "the deletion to be seen")
    # The local host's set is another set.
    assert "cpusmall" not in {i["name"] for i in json.loads(
        kstudio("instance-type", "list", "-o", "json").stdout)}  # fmt: skip


def test_a_bad_instance_type_file_is_refused_by_field_and_nothing_is_stored(
    kstudio, people, kube, tmp_path
):
    it_ops = registered_with_the_cli(kstudio, people, kube, tmp_path)
    kstudio("cluster", "install", "lab", check=True, **it_ops)
    bad = yaml.safe_load(AZURE_LIST)
    bad["items"][1]["spec"]["resources"]["requests"]["nvidia.com/gpu"] = 1
    bad["items"][1]["spec"]["resources"]["limits"]["cpu"] = "0"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    refused = kstudio("instance-type", "create", "-f", str(path), "--cluster", "lab", **it_ops)
    assert refused.returncode == 2
    assert "items[1].spec.resources.requests.nvidia.com/gpu: GPUs are set in limits only" in (
        refused.stderr
    )
    assert "items[1].spec.resources.limits.cpu: must be greater than zero" in refused.stderr
    kinds = kube.api.kind("kstudio.io", "instancetypes")
    assert kube.api.list(kinds, "")["items"] == []
    assert not InstanceType.objects.filter(cluster__name="lab", name="cpusmall").exists()
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("apiVersion: v1\nkind: ConfigMap\n")
    refused = kstudio("instance-type", "create", "-f", str(wrong), "--cluster", "lab", **it_ops)
    assert refused.returncode == 2 and "apiVersion: expected one of" in refused.stderr


def test_console_pages_refuse_bad_input_by_field_and_store_nothing(client, people, kube):
    client.force_login(people.contributor)
    assert client.get("/console/clusters/new/").status_code == 403
    client.force_login(people.it_ops)
    bad = client.post("/console/clusters/new/", {"name": "lab", "kubeconfig": "a: [b"})
    assert bad.status_code == 400 and b"kubeconfig: not valid YAML" in bad.content
    assert not Cluster.objects.exists()
    made = client.post(
        "/console/clusters/new/", {"name": "lab", "kubeconfig": yaml.safe_dump(kube.kubeconfig())}
    )
    assert made.status_code == 302
    page = client.get("/console/clusters/lab/")
    assert (
        f"yes, Kubernetes {kube.api.git_version}".encode() in page.content
        and kube.secret.encode() not in page.content
    )
    client.post("/console/clusters/lab/install/", {"settings": ""})
    bad_item = AZURE_ONE.replace('cpu: "700m"', 'cpu: "0"')
    refused = client.post("/console/clusters/lab/instance-types/", {"document": bad_item})
    assert refused.status_code == 400
    assert b"spec.resources.requests.cpu: must be greater than zero" in refused.content
    assert not InstanceType.objects.filter(name="myinstancetypename").exists()
    attach = client.post(
        "/console/workspaces/demo/attach/",
        {"name": "k8s", "cluster": "lab", "namespace": "missing"},
    )
    assert attach.status_code == 400 and b"does not exist in cluster" in attach.content
    manifests = client.get("/console/clusters/lab/manifests/")
    assert manifests["Content-Type"] == "application/yaml"
    assert b"kind: ClusterRole" in manifests.content


def test_a_clusters_instance_type_is_made_and_edited_field_by_field_in_the_console(
    client, people, kube
):
    """The console's form writes the InstanceType object in the cluster first (Azure's
    fields, as kubectl would see them), then the row; a bad quantity is refused by field
    with nothing stored anywhere; a selector no node matches is saved with a warning."""
    client.force_login(people.it_ops)
    kubeconfig = yaml.safe_dump(kube.kubeconfig())
    assert (
        client.post("/console/clusters/new/", {"name": "lab", "kubeconfig": kubeconfig}).status_code
        == 302
    )
    client.post("/console/clusters/lab/install/", {"settings": ""})
    assert client.get("/console/clusters/lab/instance-types/new/").status_code == 200
    fields = {"name": "gpu-small", "node_selector_text": "pool: gpu\n",
              "requests_cpu": "500m", "requests_memory": "1Gi",
              "limits_cpu": "1", "limits_memory": "2Gi", "limits_gpu": "1"}  # fmt: skip
    bad = client.post("/console/clusters/lab/instance-types/new/", {**fields, "limits_cpu": "0"})
    assert bad.status_code == 400 and b"must be greater than zero" in bad.content
    kinds = kube.api.kind("kstudio.io", "instancetypes")
    assert kube.api.list(kinds, "")["items"] == []
    assert not InstanceType.objects.filter(cluster__name="lab", name="gpu-small").exists()
    made = client.post("/console/clusters/lab/instance-types/new/", fields, follow=True)
    assert made.status_code == 200 and b"Instance type gpu-small saved in lab." in made.content
    assert b"no node advertises nvidia.com/gpu" in made.content  # a warning, not a refusal
    spec = kube.api.get(kinds, "", "gpu-small")["spec"]
    assert spec == {
        "nodeSelector": {"pool": "gpu"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                      "limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1}},
    }  # fmt: skip
    edit = "/console/clusters/lab/instance-types/gpu-small/edit/"
    assert b'value="2Gi"' in client.get(edit).content
    changed = client.post(edit, {**fields, "limits_memory": "4Gi"})
    assert changed.status_code == 302
    assert kube.api.get(kinds, "", "gpu-small")["spec"]["resources"]["limits"]["memory"] == "4Gi"
    row = InstanceType.objects.get(cluster__name="lab", name="gpu-small")
    assert row.resources["limits"]["memory"] == "4Gi"


def test_job_validate_prints_the_exact_objects_without_creating_anything(
    attached, kstudio, kube, tmp_path
):
    job = tmp_path / "job.yml"
    job.write_text("command: echo hi\nresources: {shm_size: 512m}\n")
    printed = kstudio("job", "validate", "-f", str(job), "--set", "compute=azureml:k8s",
                      "-o", "yaml")  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    objects = list(yaml.safe_load_all(printed.stdout))
    assert [o["kind"] for o in objects] == ["Job", "Secret"]
    assert "kjt_" not in printed.stdout  # no token: the Secret holds a placeholder
    launch = json.loads(bundle_files(objects[1])["launch.json"])
    assert launch["studio"]["token"] == "(a token for this job alone, made when it starts)"
    assert launch["environment_variables"]["MLFLOW_TRACKING_TOKEN"] == launch["studio"]["token"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects[0]["spec"]["template"]["spec"]
    assert objects[0]["metadata"]["namespace"] == "team-a"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}} in (
        pod["volumes"]
    )
    assert kube.api.count(kube.api.kind("batch", "jobs"), "team-a") == 0  # nothing created
    assert not Job.objects.exists()
    local = kstudio("job", "validate", "-f", str(job), "--set", "compute=azureml:local",
                    "-o", "yaml")  # fmt: skip
    assert local.returncode == 1 and "creates no Kubernetes objects" in local.stderr
    job.write_text("command: echo hi\nresources: {shm_size: lots}\n")
    bad = kstudio("job", "validate", "-f", str(job))
    assert bad.returncode == 2 and "resources.shm_size" in bad.stderr


def test_a_namespace_deleted_behind_the_studios_back_is_shown_and_refuses_submissions(
    attached, workspace, people, kube, api, client
):
    from compute import clusters

    kube.api.create(kube.api.kind("", "pods"), "team-a", {
        "metadata": {"name": "slow-to-stop"},
        "spec": {"terminationGracePeriodSeconds": 30, "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]}]},
    })  # fmt: skip
    kube.api.delete(kube.api.kind("", "namespaces"), "", "team-a")
    clusters.check_attachments()  # what the controller does every 30 s
    shown = api(people.reader).get("/api/v1/workspaces/demo/computes/k8s/").json()
    # The namespace lasts until its pod has ended: it is going, and says so.
    assert "namespace 'team-a' is being deleted in cluster 'lab'" in shown["problem"]
    kube.api.delete(kube.api.kind("", "pods"), "team-a", "slow-to-stop", grace=0)
    wait_until(
        lambda: not kube.exists("", "namespaces", "", "team-a"), 60, "the namespace to be gone"
    )  # as `kubectl delete ns` waits
    clusters.check_attachments()
    shown = api(people.reader).get("/api/v1/workspaces/demo/computes/k8s/").json()
    assert "namespace 'team-a' no longer exists in cluster 'lab'" in shown["problem"]
    client.force_login(people.it_ops)
    assert b"no longer exists in cluster" in client.get("/console/").content
    refused = api(people.contributor).post(
        "/api/v1/workspaces/demo/jobs/", {"yaml": JOB_ECHO}, format="json"
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "compute"
    assert "no longer exists" in refused.json()["errors"][0]["message"]
    assert not Job.objects.exists()

    # Made again (its Role too, gone with it) by an admin's install.
    installed = api(people.it_ops).post(
        "/api/v1/clusters/lab/install/", {"kubeconfig": admin_kubeconfig(kube)}, format="json"
    )
    assert installed.status_code == 200 and not installed.json()["problems"]
    assert api(people.reader).get("/api/v1/workspaces/demo/computes/k8s/").json()["problem"] == ""
    job = finished(services.submit_yaml(workspace, people.contributor, JOB_ECHO, {}))
    assert job.status == "Completed", job.failure_reason


# -- capacity -----------------------------------------------------------------------------------
def test_nodes_and_fits_are_shown_and_misfits_warned_at_save_and_at_submit(
    attached, workspace, people, api, kube, kstudio
):
    kube.add_node("gpu-1", {"pool": "gpu"}, cpu="8", memory="32Gi", gpus=0)
    url = "/api/v1/clusters/lab/instance-types/"
    body = {"name": "small", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                           "limits": {"cpu": "1", "memory": "1Gi"}}}  # fmt: skip
    sizes = {
        "small": ({}, {"cpu": "1", "memory": "1Gi"}, {}),
        "big": ({"pool": "cpu"}, {"cpu": "6", "memory": "4Gi"}, {}),
        "gpu": ({}, {"cpu": "1", "memory": "1Gi"}, {"nvidia.com/gpu": 1}),
        "elsewhere": ({"zone": "mars"}, {"cpu": "1", "memory": "1Gi"}, {}),
    }
    warnings = {}
    for name, (selector, requests, extra) in sizes.items():
        body = {"name": name, "nodeSelector": selector,
                "resources": {"requests": requests, "limits": {**requests, **extra}}}  # fmt: skip
        made = api(people.it_ops).post(url, body, format="json")
        assert made.status_code == 201, made.content
        warnings[name] = made.json()[0]["warning"]
    assert warnings["small"] == ""
    assert "the nearest, node-1, lacks 2 cpu" in warnings["big"]
    assert "no node advertises nvidia.com/gpu" in warnings["gpu"]
    assert "no Ready node has the labels zone=mars" in warnings["elsewhere"]

    job = services.submit_yaml(
        workspace, people.contributor, "command: sleep 30\ncompute: azureml:k8s\n"
        "resources: {instance_type: big}\n", {}
    )  # fmt: skip
    assert any("lacks 2 cpu" in note for note in job.enforcement_notes)
    kube.api.get(kube.api.kind("", "nodes"), "", "node-1")
    runs = services.submit_yaml(
        workspace, people.contributor, "command: sleep 30\ncompute: azureml:k8s\n"
        "resources: {instance_type: small}\n", {}
    )  # fmt: skip

    def requested() -> dict | None:
        report = api(people.it_ops).get("/api/v1/clusters/lab/nodes/").json()
        busy = [n for n in report["nodes"] if n["requested"].get("cpu") == "1"]
        return report if busy else None

    report = wait_until(requested, 30, "the small job's pod to be placed")
    nodes = {n["name"]: n for n in report["nodes"]}
    assert nodes["node-1"]["allocatable"] == {"cpu": "4", "memory": "16.0Gi"}
    assert nodes["gpu-1"]["labels"]["pool"] == "gpu" and not report["gpus_advertised"]
    fits = {t["name"]: t for t in report["instance_types"]}
    assert sum(fits["small"]["fits"].values()) == 4 + 8 - 1  # one cpu in use by the pod
    assert fits["big"]["fits"] == {} and "lacks" in fits["big"]["warning"]
    shown = kstudio("cluster", "nodes", "lab", KSTUDIO_TOKEN=token_for(people.it_ops))
    assert shown.returncode == 0 and "gpu-1" in shown.stdout and "lacks 2 cpu" in shown.stdout
    services.cancel(job)
    services.cancel(runs)
    finished(job), finished(runs)


def test_a_distributed_job_runs_one_pod_per_instance_with_each_frameworks_variables(
    attached, workspace, people, kube, kstudio, tmp_path, api, client
):
    text = (
        "command: echo $MASTER_ADDR $MASTER_PORT $WORLD_SIZE $NODE_RANK $RANK $LOCAL_RANK\n"
        "compute: azureml:k8s\nresources: {instance_count: 2}\ndistribution: {type: pytorch}\n"
    )
    path = tmp_path / "job.yml"
    path.write_text(text)
    printed = kstudio("job", "validate", "-f", str(path), "-o", "yaml")
    assert printed.returncode == 0, printed.stderr
    objects = list(yaml.safe_load_all(printed.stdout))
    assert [o["kind"] for o in objects] == ["Job", "Secret", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert objects[0]["spec"]["completionMode"] == "Indexed"
    assert objects[0]["spec"]["completions"] == objects[0]["spec"]["parallelism"] == 2

    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", job.failure_reason
    name = job.runtime["name"]
    master = f"{name}-0.{name}"
    assert sorted(lines_of(job)) == [f"[0] {master} 29500 2 0 0 0", f"[1] {master} 29500 2 1 1 0"]
    service = kube.api.get(kube.api.kind("", "services"), "team-a", name)
    assert service["spec"]["clusterIP"] == "None"
    assert [(i["index"], i["phase"], i["node"]) for i in job.instances] == [
        (0, "Succeeded", "node-1"),
        (1, "Succeeded", "node-1"),
    ]
    shown = api(people.reader).get(f"/api/v1/workspaces/demo/jobs/{job.name}/").json()
    assert len(shown["instances"]) == 2
    client.force_login(people.reader)
    page = client.get(f"/workspaces/demo/jobs/{job.name}/").content.decode()
    assert "<h3>Instances</h3>" in page and "Succeeded" in page

    tf = "command: echo $TF_CONFIG\ncompute: azureml:k8s\nresources: {instance_count: 2}\n"
    tf += "distribution: {type: tensorflow}\n"
    job = finished(services.submit_yaml(workspace, people.contributor, tf, {}))
    configs = {line[:3]: json.loads(line[4:]) for line in lines_of(job)}
    assert configs["[1]"]["task"] == {"type": "worker", "index": 1}
    assert configs["[0]"]["environment"] == "cloud"
    assert len(configs["[0]"]["cluster"]["worker"]) == 2
    # Two processes per instance: four workers, each with its own port and index.
    tf = tf.replace("{type: tensorflow}", "{type: tensorflow, process_count_per_instance: 2}")
    job = finished(services.submit_yaml(workspace, people.contributor, tf, {}))
    assert job.status == "Completed", job.failure_reason
    configs = sorted((json.loads(line[4:]) for line in lines_of(job)),
                     key=lambda c: c["task"]["index"])  # fmt: skip
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(4)]
    workers = configs[0]["cluster"]["worker"]
    assert all(c["cluster"]["worker"] == workers and c["environment"] == "cloud" for c in configs)
    hosts = [w.rsplit(":", 1)[0] for w in workers]
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3]
    assert [w.rsplit(":", 1)[1] for w in workers] == ["2222", "2223", "2222", "2223"]


# Rank 0 listens at MASTER_ADDR:MASTER_PORT (its own pod's name), the others reach it
# there by that name, as torch.distributed's rendezvous does.
RENDEZVOUS = """\
import os, socket, time
host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if os.environ["RANK"] == "0":
    with socket.create_server((socket.gethostbyname(host), port)) as server:
        peer, _ = server.accept()
        print("rank 0 heard:", peer.recv(64).decode())
else:
    for _ in range(600):  # until rank 0 listens (and its name is known)
        try:
            peer = socket.create_connection((host, port), timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    peer.sendall(b"rank " + os.environ["RANK"].encode())
    print("rank", os.environ["RANK"], "reached", host)
"""


@pytest.mark.skipif(not NSS_WRAPPER, reason="needs libnss-wrapper (make test installs it)")
def test_a_distributed_jobs_pods_reach_each_other_by_name(attached, workspace, people, kube):
    text = (
        "command: python3 rendezvous.py\ncode: .\ncompute: azureml:k8s\n"
        "resources: {instance_count: 2}\ndistribution: {type: pytorch}\n"
    )
    code = code_archive({"rendezvous.py": RENDEZVOUS.encode()})
    job = finished(
        services.submit_yaml(
            workspace, people.contributor, text, {"code": services.Upload(code, "code.tar.gz")}
        )
    )
    assert job.status == "Completed", (job.failure_reason, lines_of(job))
    master = f"{job.runtime['name']}-0.{job.runtime['name']}"
    assert sorted(lines_of(job)) == ["[0] rank 0 heard: rank 1", f"[1] rank 1 reached {master}"]


@pytest.mark.skipif(
    not (NSS_WRAPPER and shutil.which("mpirun")),
    reason="needs libnss-wrapper and Open MPI's mpirun (make test installs them)",
)
def test_an_mpi_job_runs_mpirun_across_its_instances_without_ssh(attached, workspace, people):
    text = (
        "command: echo rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE, local "
        "$OMPI_COMM_WORLD_LOCAL_RANK, on instance $JOB_COMPLETION_INDEX\ncompute: azureml:k8s\n"
        "resources: {instance_count: 2}\n"
        "distribution: {type: mpi, process_count_per_instance: 2}\n"
    )
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}), 120)
    assert job.status == "Completed", (job.failure_reason, lines_of(job))
    # mpirun, on instance 0, gathers every rank's output: four ranks, two per instance,
    # those of instance 1 started there (in its pod's environment) by its launcher.
    ranks = sorted(line for line in lines_of(job) if " rank " in f" {line}")
    wanted = [f"[0] rank {r} of 4, local {r % 2}, on instance {r // 2}" for r in range(4)]
    assert ranks == wanted, lines_of(job)
    assert [i["phase"] for i in job.instances] == ["Succeeded", "Succeeded"]
    # One instance, two processes: mpirun there alone.
    text = text.replace("instance_count: 2", "instance_count: 1")
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}), 120)
    assert job.status == "Completed", (job.failure_reason, lines_of(job))
    ranks = sorted(line for line in lines_of(job) if " rank " in f" {line}")
    assert ranks == [f"rank {r} of 2, local {r}, on instance 0" for r in range(2)], ranks


def test_distributions_not_built_yet_are_refused_by_name(attached, workspace, people):
    from jobs.spec import SpecError

    for extra, field in (("distribution: {type: ray}", "distribution.type"),):
        text = f"command: echo\ncompute: azureml:k8s\nresources: {{instance_count: 2}}\n{extra}\n"
        with pytest.raises(SpecError) as refused:
            services.submit_yaml(workspace, people.contributor, text, {})
        assert refused.value.errors[0][0] == field
    assert not Job.objects.exists()


def test_big_uploads_are_fetched_from_the_studio_with_the_job_token(
    attached, workspace, people, kube
):
    big = b"x" * (600 * 1024) + b"\n"
    text = (
        "command: wc -c < ${{inputs.data}}\ncompute: azureml:k8s\n"
        "inputs: {data: {type: uri_file, path: ./data.txt}}\n"
    )
    uploads = {"inputs.data": services.Upload(io.BytesIO(big), "data.txt")}
    job = finished(services.submit_yaml(workspace, people.contributor, text, uploads))
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == [str(len(big))]
    files = bundle_files(kube.api.get(kube.api.kind("", "secrets"), "team-a", job.runtime["name"]))
    assert set(files) == {"launcher.py", "launch.json"}
    assert json.loads(files["launch.json"])["inputs"]["data"]["fetch"] == "inputs.data"


def test_an_image_without_python_fails_the_job_saying_so(attached, workspace, people):
    text = "command: echo hi\ncompute: azureml:k8s\nenvironment: {image: 'busybox:no-python'}\n"
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Failed"
    assert "busybox:no-python could not run the studio's launcher" in job.failure_reason
    assert "python3 (3.8 or newer)" in job.failure_reason


def test_a_repeated_submit_finds_the_job_it_made_and_labels_name_the_job(
    attached, workspace, people, kube
):
    from compute.backends import backend_for
    from jobs.launch import launch_spec

    workspace.name = "a-workspace-with-a-rather-long-name_that_kubernetes_labels_cannot_hold_" * 2
    workspace.save()
    job = services.submit_yaml(
        workspace, people.contributor, "command: sleep 30\ncompute: azureml:k8s\n", {}
    )
    backend = backend_for(attached)
    spec = launch_spec(Job.objects.select_related("workspace").get(pk=job.pk))
    first = backend.submit(spec)
    again = backend.submit(spec)  # the answer to the first was lost, say: 409, same Job
    assert again["uid"] == first["uid"]
    made = kube.api.list(kube.api.kind("batch", "jobs"), "team-a")["items"]
    assert len(made) == 1
    labels = made[0]["spec"]["template"]["metadata"]["labels"]
    assert labels["kstudio.io/job-name"] == job.name and labels["kstudio.io/compute"] == "k8s"
    assert len(labels["kstudio.io/workspace"]) <= 63
    # A list's items carry no apiVersion or kind (the list says them).
    kubernetes_validate.validate(
        {"apiVersion": "batch/v1", "kind": "Job",
         **{k: v for k, v in made[0].items() if k != "status"}}, K8S_VERSION, strict=False,
    )  # fmt: skip
    services.cancel(job)
    finished(job)


def test_several_processes_per_instance_each_get_their_rank(attached, workspace, people):
    text = (
        "command: echo rank $RANK local $LOCAL_RANK of $WORLD_SIZE\ncompute: azureml:k8s\n"
        "resources: {instance_count: 2}\n"
        "distribution: {type: pytorch, process_count_per_instance: 2}\n"
    )
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", job.failure_reason
    assert sorted(lines_of(job)) == [
        "[0] rank 0 local 0 of 4",
        "[0] rank 1 local 1 of 4",
        "[1] rank 2 local 0 of 4",
        "[1] rank 3 local 1 of 4",
    ]
    failing = text.replace("echo rank $RANK local $LOCAL_RANK of $WORLD_SIZE", "exit $RANK")
    job = finished(services.submit_yaml(workspace, people.contributor, failing, {}))
    assert job.status == "Failed"  # rank 1 exits 1 (and ranks 2, 3 too): the job fails
    # One process failing stops its instance's others, which would wait for it for ever.
    waiting = text.replace(
        "echo rank $RANK local $LOCAL_RANK of $WORLD_SIZE",
        "if [ $LOCAL_RANK = 1 ]; then exit 3; fi; sleep 600",
    )
    job = finished(services.submit_yaml(workspace, people.contributor, waiting, {}), 60)
    assert job.status == "Failed" and "3" in job.failure_reason, job.failure_reason
    assert "a process of this instance exited with 3: stopping the others" in "\n".join(
        lines_of(job)
    )


def test_two_workspaces_share_a_namespace_and_a_job_name_without_colliding(
    attached, workspace, people, kube
):
    from compute import clusters
    from studio.services import create_workspace

    other = create_workspace("other", owner=people.contributor)
    clusters.attach(other, "k8s", attached.cluster, "team-a")  # the same namespace
    text = "name: train\ncommand: echo from $KSTUDIO_JOB_NAME\ncompute: azureml:k8s\n"
    ours = services.submit_yaml(workspace, people.contributor, text, {})
    theirs = services.submit_yaml(other, people.contributor, text, {})
    ours, theirs = finished(ours), finished(theirs)
    assert ours.status == theirs.status == "Completed"
    assert lines_of(ours) == lines_of(theirs) == ["from train"]
    assert ours.runtime["name"] != theirs.runtime["name"]
    assert kube.api.count(kube.api.kind("batch", "jobs"), "team-a") == 2


def test_a_kubernetes_target_is_only_made_by_attaching_and_no_target_changes_type(
    api, people, client, attached
):
    url = "/api/v1/workspaces/demo/computes/"
    changed = api(people.it_ops).patch(url + "local/", {"type": "kubernetes"}, format="json")
    assert changed.status_code == 400 and changed.json()["errors"][0]["field"] == "type"
    client.force_login(people.it_ops)
    form = client.post(
        "/console/workspaces/demo/computes/new/", {"name": "k", "kind": "kubernetes"}
    )
    assert form.status_code == 400 and b"Select a valid choice" in form.content
    assert not ComputeTarget.objects.filter(name="k").exists()
    assert ComputeTarget.objects.get(name="local").kind == "local"


def test_a_pod_reads_data_assets_and_datastores_and_builds_its_environment(
    attached, workspace, people, kube, s3_store
):
    """Host-folder files come through the studio with the job token, S3 files straight
    from the storage by signed URL; the pod asks for the listing when it starts (no
    signed URL is kept in the cluster); the conda file is installed before the command."""
    from data import services as data_services
    from tests.test_data import s3_client, s3_document

    prefix = f"k{uuid.uuid4().hex[:8]}"
    s3_client(s3_store).put_object(
        Bucket=s3_store["bucket_name"], Key=f"{prefix}/rows.csv", Body=b"1,2\n"
    )
    data_services.save_datastore(workspace, people.it_ops, s3_document(s3_store))
    data_services.create_asset(
        workspace, people.contributor, {"name": "shapes", "path": "./shapes"},
        code_archive({"a.txt": b"A\n", "sub/b.txt": b"B\n"}),
    )  # fmt: skip
    text = f"""
command: >-
  cat ${{{{inputs.shapes}}}}/a.txt ${{{{inputs.shapes}}}}/sub/b.txt ${{{{inputs.rows}}}} &&
  python -c "import termcolor; print('env ok')"
compute: azureml:k8s
inputs:
  shapes: {{type: uri_folder, path: "azureml:shapes@latest"}}
  rows: {{type: uri_file, path: "azureml://datastores/lake/paths/{prefix}/rows.csv"}}
environment:
  image: python:3.11-slim
  conda_file: {{dependencies: [{{pip: [termcolor]}}]}}
"""
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}), 120)
    lines = lines_of(job)
    assert job.status == "Completed", (job.failure_reason, lines)
    assert [x for x in lines if not x.startswith(("[kstudio]", "Collecting", "Looking",
            "Downloading", "Installing", "Successfully", "Processing"))][-4:] == [
        "A", "B", "1,2", "env ok"]  # fmt: skip
    files = bundle_files(kube.api.get(kube.api.kind("", "secrets"), "team-a", job.runtime["name"]))
    launch = json.loads(files["launch.json"])
    for name in ("shapes", "rows"):
        assert launch["inputs"][name]["listing"] == f"inputs/{name}/files/"
        assert "files" not in launch["inputs"][name]
    assert s3_store["secret_key"] not in files["launch.json"]


def test_an_attachment_names_the_secret_its_pods_pull_images_with(api, people, kube, live_studio):
    assert register(api, people.it_ops, kube, studio_url=live_studio.url).status_code == 201
    body = {"name": "private", "type": "kubernetes", "cluster": "lab", "namespace": "team-b",
            "create_namespace": True}  # fmt: skip
    bad = api(people.it_ops).post(
        "/api/v1/workspaces/demo/computes/", {**body, "image_pull_secret": "Bad_Name"},
        format="json",
    )  # fmt: skip
    assert bad.status_code == 400
    assert (
        "Secret's name"
        in {e["field"]: e["message"] for e in bad.json()["errors"]}["image_pull_secret"]
    )
    made = api(people.it_ops).post(
        "/api/v1/workspaces/demo/computes/", {**body, "image_pull_secret": "registry-creds"},
        format="json",
    )  # fmt: skip
    assert made.status_code == 201, made.content
    assert made.json()["image_pull_secret"] == "registry-creds"
    text = "command: echo hi\ncompute: azureml:private\nenvironment: {image: 'python:3.11'}\n"
    response = api(people.contributor).post(
        "/api/v1/workspaces/demo/jobs/validate/", {"yaml": text}, format="json"
    )
    job = next(o for o in response.json()["objects"] if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["containers"][0]["image"] == "python:3.11"


def test_a_namespaces_environment_cache_is_built_once_for_all_its_pods(
    attached, workspace, people, api, kube
):
    from compute import clusters

    cluster = attached.cluster
    admin = admin_kubeconfig(kube)
    outcome = clusters.install(
        cluster, ["environmentCache=true", "environmentCacheSize=5Gi"], admin
    )
    assert not outcome.problems, outcome.problems
    claim = kube.api.get(
        kube.api.kind("", "persistentvolumeclaims"), "team-a", "kstudio-environments"
    )
    kubernetes_validate.validate(
        {k: v for k, v in claim.items() if k != "status"}, K8S_VERSION, strict=True
    )
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    text = """
command: python -c "import termcolor; print('env ok')"
compute: azureml:k8s
environment:
  image: python:3.11-slim
  conda_file: {dependencies: [{pip: [termcolor]}]}
"""
    first = finished(services.submit_yaml(workspace, people.contributor, text, {}), 120)
    second = finished(services.submit_yaml(workspace, people.contributor, text, {}), 120)
    for job in (first, second):
        assert job.status == "Completed", (job.failure_reason, lines_of(job))
        assert lines_of(job)[-1] == "env ok"
    assert any("environment: building inline" in x for x in lines_of(first))
    assert any("environment: reusing inline" in x for x in lines_of(second))
    made = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", second.runtime["name"])
    volumes = made["spec"]["template"]["spec"]["volumes"]
    assert {"name": "environments",
            "persistentVolumeClaim": {"claimName": "kstudio-environments"}} in volumes  # fmt: skip

    # A namespace attached later gets its cache with the install that grants it to the
    # studio; uninstall removes the claims.
    later = api(people.it_ops).post(
        "/api/v1/workspaces/demo/computes/",
        {"name": "k8s-c", "type": "kubernetes", "cluster": "lab", "namespace": "team-c",
         "create_namespace": True},
        format="json",
    )  # fmt: skip
    assert later.status_code == 201, later.content
    assert "does not reach namespace 'team-c'" in later.json()["problem"]
    assert not clusters.install(Cluster.objects.get(name="lab"), [], admin).problems
    kube.api.get(kube.api.kind("", "persistentvolumeclaims"), "team-c", "kstudio-environments")
    removed = {a["name"]: a["outcome"] for a in clusters.uninstall(cluster, admin)}
    assert removed["team-a/kstudio-environments"] == "deleted"


def build_context(dockerfile: str) -> io.BytesIO:
    return code_archive({"Dockerfile": dockerfile.encode(), "requirements.txt": b"termcolor\n"})


def test_an_environment_built_from_a_context_is_built_once_in_the_cluster_and_used(
    attached, workspace, people, kube
):
    from compute import clusters
    from compute.backends.kubernetes import built_image
    from environments.services import create_environment

    text = "command: echo built\ncompute: azureml:k8s\nenvironment: azureml:built@latest\n"
    create_environment(
        workspace, people.contributor, {"name": "built", "build": {"path": "ctx"}},
        build_context("FROM python:3.11-slim\nRUN pip install -r requirements.txt\n"),
    )  # fmt: skip
    # Without a registry to push to, the cluster cannot build: said at submission.
    with pytest.raises(SpecError) as refused:
        services.submit_yaml(workspace, people.contributor, text, {})
    assert "needs a registry to push it to" in dict(refused.value.errors)["environment"]
    settings = ["imageRegistry=registry.kube.test/ks"]
    assert not clusters.install(attached.cluster, settings, admin_kubeconfig(kube)).problems

    first = services.submit_yaml(workspace, people.contributor, text, {})

    def waiting_for_the_image() -> bool:
        first.refresh_from_db()
        return "Building its environment's image" in first.waiting_reason or first.is_terminal

    wait_until(waiting_for_the_image, 30, "the job to wait for its image")
    first = finished(first, 60)
    assert first.status == "Completed", first.failure_reason
    assert lines_of(first) == ["built"]
    image = built_image("registry.kube.test/ks", {"label": "built:1",
                        "hash": first.environment_used["build"]["hash"]})  # fmt: skip
    assert kube.pushed(image)
    made = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", first.runtime["name"])
    assert made["spec"]["template"]["spec"]["containers"][0]["image"] == image
    builder = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", first.runtime["builder"])
    kubernetes_validate.validate(
        {k: v for k, v in builder.items() if k != "status"}, K8S_VERSION, strict=True
    )

    # Built once: the next job of that context starts at once, no second build.
    second = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert second.status == "Completed", second.failure_reason
    builders = [j for j in kube.api.list(kube.api.kind("batch", "jobs"), "team-a")["items"]
                if j["metadata"]["name"].startswith("ks-build-")]  # fmt: skip
    assert len(builders) == 1
    assert not kube.api.get(kube.api.kind("batch", "jobs"), "team-a",
                            second.runtime["name"])["spec"].get("suspend")  # fmt: skip

    # A build that fails fails its jobs with the builder's own words.
    create_environment(
        workspace, people.contributor, {"name": "broken", "build": {"path": "ctx"}},
        build_context("FROM python:3.11-slim\nRUN false\n"),
    )  # fmt: skip
    text = text.replace("built@latest", "broken@latest")
    broken = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert broken.status == "Failed"
    assert broken.failure_reason.startswith("Building the image registry.kube.test/ks/broken:")
    assert "error building image" in broken.failure_reason


def test_the_local_compute_refuses_an_environment_built_from_a_context(workspace, people):
    from environments.services import create_environment

    create_environment(
        workspace, people.contributor, {"name": "built", "build": {"path": "ctx"}},
        build_context("FROM python:3.11-slim\n"),
    )  # fmt: skip
    with pytest.raises(SpecError) as refused:
        services.submit_yaml(
            workspace, people.contributor, "command: echo\nenvironment: azureml:built:1\n", {}
        )
    assert "the local compute cannot do" in dict(refused.value.errors)["environment"]


def test_a_host_folder_datastore_is_mounted_in_pods_where_it_ops_said(
    attached, workspace, people, kube, tmp_path, monkeypatch
):
    from data import services as data_services
    from jobs.api import io

    def not_through_the_studio(*args, **kwargs):
        raise AssertionError("the pod read the file through the studio, not its mount")

    monkeypatch.setattr(io.InputFileView, "get", not_through_the_studio)

    shared = tmp_path / "shared"
    (shared / "rows").mkdir(parents=True)
    (shared / "rows" / "a.csv").write_text("1,2\n")
    shared.chmod(0o755)
    data_services.save_datastore(workspace, people.it_ops, {
        "name": "lab-nfs", "type": "local", "path": str(shared),
        "volume": {"nfs": {"server": "nfs.lab.example", "path": str(shared)}},
    })  # fmt: skip
    text = """
command: cat ${{inputs.rows}}/a.csv
compute: azureml:k8s
inputs: {rows: {type: uri_folder, path: "azureml://datastores/lab-nfs/paths/rows"}}
"""
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", (job.failure_reason, lines_of(job))
    assert lines_of(job) == ["1,2"]
    made = kube.api.get(kube.api.kind("batch", "jobs"), "team-a", job.runtime["name"])
    kubernetes_validate.validate(
        {k: v for k, v in made.items() if k != "status"}, K8S_VERSION, strict=True
    )
    pod = made["spec"]["template"]["spec"]
    assert {"name": "data-0", "nfs": {"server": "nfs.lab.example", "path": str(shared),
            "readOnly": True}} in pod["volumes"]  # fmt: skip
    files = bundle_files(kube.api.get(kube.api.kind("", "secrets"), "team-a", job.runtime["name"]))
    assert json.loads(files["launch.json"])["inputs"]["rows"]["listing"]

    bad = {"name": "x", "type": "local", "path": "/srv", "volume": {}}
    with pytest.raises(SpecError) as refused:  # SpecError: the documents' error kind
        data_services.save_datastore(workspace, people.it_ops, bad)
    assert dict(refused.value.errors) == {
        "volume": "give persistentVolumeClaim or nfs (one of them)"
    }
