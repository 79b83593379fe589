"""Least privilege against the real API server: once the extension is installed the studio
holds only its ServiceAccount's token, every later call is made as that account, and the
acts that change its rights take a cluster admin's kubeconfig that is not kept."""

from __future__ import annotations

import yaml

from compute import clusters
from compute.models import Cluster, ComputeTarget
from jobs import services
from tests.conftest import admin_kubeconfig, wait_until
from tests.test_kubernetes import JOB_ECHO, finished, lines_of

STUDIO_ACCOUNT = "system:serviceaccount:kstudio-system:kstudio"


def test_after_install_the_studio_calls_the_cluster_only_as_the_extensions_account(
    attached, workspace, people, api, kube
):
    cluster = Cluster.objects.get(name="lab")
    assert cluster.credentials == "extension"
    kept = yaml.safe_load(cluster.kubeconfig)
    assert [u["name"] for u in kept["users"]] == ["kstudio-system/kstudio"]
    assert set(kept["users"][0]["user"]) == {"token"}  # the admin's client key is gone
    shown = api(people.it_ops).get("/api/v1/clusters/lab/")
    assert shown.json()["credentials"] == "extension"
    assert kube.secret not in shown.content.decode()

    kube.api.mark()
    job = finished(services.submit_yaml(workspace, people.contributor, JOB_ECHO, {}))
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["hello"]
    api(people.it_ops).get("/api/v1/clusters/lab/nodes/")
    users = kube.api.users()
    assert set(users) == {STUDIO_ACCOUNT}, users  # and never the admin's, nor anyone else


def test_acts_that_change_the_studios_rights_take_an_admins_kubeconfig_not_kept(
    attached, workspace, people, api, kube
):
    it_ops = api(people.it_ops)
    refused = it_ops.post("/api/v1/clusters/lab/install/", {}, format="json")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "kubeconfig"
    assert "admin's kubeconfig" in refused.json()["errors"][0]["message"]
    other = yaml.safe_load(admin_kubeconfig(kube))
    other["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    wrong = it_ops.post("/api/v1/clusters/lab/install/", {"kubeconfig": yaml.safe_dump(other)},
                        format="json")  # fmt: skip
    assert (
        wrong.status_code == 400 and "is not cluster 'lab'" in wrong.json()["errors"][0]["message"]
    )

    # A namespace attached after the install is not the studio's until an admin says so.
    made = it_ops.post(
        "/api/v1/workspaces/demo/computes/",
        {"name": "k8s-b", "type": "kubernetes", "cluster": "lab", "namespace": "team-b",
         "create_namespace": True},
        format="json",
    )  # fmt: skip
    assert made.status_code == 201, made.content
    problem = ComputeTarget.objects.get(name="k8s-b").problem
    assert "does not reach namespace 'team-b'" in problem and "--kubeconfig" in problem
    text = JOB_ECHO.replace("azureml:k8s", "azureml:k8s-b")
    submitted = api(people.contributor).post(
        "/api/v1/workspaces/demo/jobs/", {"yaml": text}, format="json"
    )
    assert submitted.status_code == 400 and "team-b" in submitted.json()["errors"][0]["message"]

    granted = it_ops.post("/api/v1/clusters/lab/install/",
                          {"kubeconfig": admin_kubeconfig(kube)}, format="json")  # fmt: skip
    assert granted.status_code == 200 and not granted.json()["problems"], granted.content
    assert ComputeTarget.objects.get(name="k8s-b").problem == ""
    cluster = Cluster.objects.get(name="lab")
    assert cluster.credentials == "extension" and kube.secret not in cluster.kubeconfig
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", job.failure_reason

    assert it_ops.post("/api/v1/clusters/lab/uninstall/", {}, format="json").status_code == 400
    removed = it_ops.post("/api/v1/clusters/lab/uninstall/",
                          {"kubeconfig": admin_kubeconfig(kube)}, format="json")  # fmt: skip
    assert removed.status_code == 200
    # The token went with the extension (once the API server's cache has seen its Secret
    # go): the studio reaches the cluster no more.
    wait_until(
        lambda: "unauthorized" in clusters.status(Cluster.objects.get(name="lab"))["message"],
        30, "the studio's token to be refused",
    )  # fmt: skip


def test_the_console_takes_the_admins_kubeconfig_and_never_shows_it_back(
    attached, client, people, kube
):
    client.force_login(people.it_ops)
    typed = {"settings": "enableTraining=maybe", "kubeconfig": admin_kubeconfig(kube)}
    page = client.post("/console/clusters/lab/install/", typed)
    assert page.status_code == 400
    body = page.content.decode()
    assert "enableTraining=maybe" in body  # what was typed is kept…
    assert kube.secret not in body  # …but for the credentials
    page = client.post("/console/clusters/lab/install/", {"settings": ""})
    assert page.status_code == 400 and "admin&#x27;s kubeconfig" in page.content.decode()
    page = client.post("/console/clusters/lab/install/",
                       {"settings": "", "kubeconfig": admin_kubeconfig(kube)})  # fmt: skip
    assert page.status_code == 200 and "The extension is installed" in page.content.decode()
    assert "the extension&#x27;s ServiceAccount" in page.content.decode()


def test_attaching_a_new_namespace_with_an_admins_kubeconfig_grants_it_there_and_then(
    attached, workspace, people, api, kube
):
    it_ops = api(people.it_ops)
    body = {"name": "k8s-c", "type": "kubernetes", "cluster": "lab", "namespace": "team-c",
            "create_namespace": True}  # fmt: skip
    other = yaml.safe_load(admin_kubeconfig(kube))
    other["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    wrong = it_ops.post("/api/v1/workspaces/demo/computes/",
                        {**body, "kubeconfig": yaml.safe_dump(other)}, format="json")  # fmt: skip
    assert wrong.status_code == 400
    assert wrong.json()["errors"][0]["field"] == "kubeconfig"
    assert not ComputeTarget.objects.filter(name="k8s-c").exists()  # nothing half-made

    made = it_ops.post("/api/v1/workspaces/demo/computes/",
                       {**body, "kubeconfig": admin_kubeconfig(kube)}, format="json")  # fmt: skip
    assert made.status_code == 201, made.content
    assert "kubeconfig" not in made.json() and kube.secret not in made.content.decode()
    assert ComputeTarget.objects.get(name="k8s-c").problem == ""
    cluster = Cluster.objects.get(name="lab")
    assert cluster.credentials == "extension" and kube.secret not in cluster.kubeconfig
    text = JOB_ECHO.replace("azureml:k8s", "azureml:k8s-c")
    job = finished(services.submit_yaml(workspace, people.contributor, text, {}))
    assert job.status == "Completed", job.failure_reason
    assert lines_of(job) == ["hello"]


def test_the_console_attach_form_takes_an_admins_kubeconfig_and_never_shows_it_back(
    attached, client, people, kube
):
    client.force_login(people.it_ops)
    typed = {"name": "k8s-d", "cluster": "lab", "namespace": "Team D", "create_namespace": "on",
             "kubeconfig": admin_kubeconfig(kube)}  # fmt: skip
    page = client.post("/console/workspaces/demo/attach/", typed)
    assert page.status_code == 400
    body = page.content.decode()
    assert 'value="k8s-d"' in body and "namespace" in body  # what was typed is kept…
    assert kube.secret not in body  # …but for the credentials
    assert not ComputeTarget.objects.filter(name="k8s-d").exists()
    page = client.post("/console/workspaces/demo/attach/", {**typed, "namespace": "team-d"})
    assert page.status_code == 302, page.content.decode()
    assert ComputeTarget.objects.get(name="k8s-d").problem == ""
