"""The REST API: submitting, validation, roles and visibility, compute for IT-ops."""

import io
import tarfile
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.db import connection
from django.test.utils import CaptureQueriesContext

from compute.models import ComputeTarget, InstanceType
from jobs.models import Job, StatusChange
from jobs.services import Upload, submit_yaml

JOBS = "/api/v1/workspaces/demo/jobs/"
HELLO = 'command: echo "hello world"\nenvironment:\n  image: library/python:latest\n'


def tar_of(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    buffer.name = "code.tar.gz"
    return buffer


# -- submitting -------------------------------------------------------------------------------
def test_submit_yaml_queues_the_job(api, people):
    response = api(people.contributor).post(JOBS, {"yaml": HELLO}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "Queued"
    assert body["compute"] == "azureml:local"
    assert body["resources"]["instance_type"] == "defaultinstancetype"
    assert body["creation_context"]["created_by"] == "carl"
    assert body["services"]["Studio"]["endpoint"].endswith(f"/workspaces/demo/jobs/{body['name']}/")
    job = Job.objects.get(name=body["name"])
    assert list(job.status_changes.values_list("status", flat=True)) == ["NotStarted", "Queued"]
    assert job.enforcement_notes  # local compute says what it cannot enforce


def test_submit_json_document(api, people):
    response = api(people.contributor).post(
        JOBS, {"command": "echo hi", "name": "my_job", "compute": "azureml:local"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "my_job"


def test_bad_input_is_400_with_every_problem_and_nothing_stored(api, people):
    store = Path(storages["artifacts"].location)
    uploads_before = list(store.rglob("*")) if store.exists() else []
    text = (
        "command: echo ${{inputs.nope}}\n"
        "compute: azureml:gpu-cluster\n"
        "resources: {instance_type: huge, instance_count: 0}\n"
        "services: {ssh: {type: ssh}}\n"
        "frobnicate: true\n"
    )
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    assert response.status_code == 400
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert errors["services"].startswith("not supported")
    assert errors["frobnicate"] == "unknown field"
    assert "resources.instance_count" in errors
    assert Job.objects.count() == 0 and StatusChange.objects.count() == 0
    assert (list(store.rglob("*")) if store.exists() else []) == uploads_before


def test_unknown_compute_and_instance_type(api, people):
    client = api(people.contributor)
    response = client.post(JOBS, {"yaml": HELLO + "compute: azureml:nowhere\n"}, format="json")
    assert response.json()["errors"] == [
        {"field": "compute", "message": "no compute target named 'nowhere' in workspace 'demo'"}
    ]
    response = client.post(
        JOBS, {"yaml": HELLO + "resources: {instance_type: huge}\n"}, format="json"
    )
    [error] = response.json()["errors"]
    assert error["field"] == "resources.instance_type"
    assert "'huge' is not offered on compute 'local'" in error["message"]


def test_local_compute_refuses_more_than_one_instance(api, people):
    text = HELLO + "resources: {instance_count: 2}\ndistribution: {type: pytorch}\n"
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    [error] = response.json()["errors"]
    assert error["field"] == "resources.instance_count"
    assert "instance_count must be 1" in error["message"]


def test_broken_yaml_is_a_400(api, people):
    response = api(people.contributor).post(JOBS, {"yaml": "command: [oops\n"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "(document)"


def test_duplicate_name_is_refused(api, people):
    client = api(people.contributor)
    assert client.post(JOBS, {"yaml": HELLO + "name: once\n"}, format="json").status_code == 201
    response = client.post(JOBS, {"yaml": HELLO + "name: once\n"}, format="json")
    assert response.json()["errors"] == [
        {"field": "name", "message": "a job named 'once' already exists in this workspace"}
    ]
    assert Job.objects.filter(name="once").count() == 1


def test_code_needs_an_upload_and_must_be_an_archive(api, people):
    client = api(people.contributor)
    text = "command: python main.py\ncode: src\n"
    response = client.post(JOBS, {"yaml": text}, format="json")
    assert response.json()["errors"][0]["field"] == "code"
    not_archive = io.BytesIO(b"plain text")
    not_archive.name = "code.txt"
    response = client.post(JOBS, {"spec": text, "code": not_archive}, format="multipart")
    assert response.json()["errors"] == [
        {"field": "code", "message": "the upload must be a .tar.gz, .tar or .zip archive"}
    ]
    assert Job.objects.count() == 0


def test_multipart_with_code_archive_is_stored(api, people):
    text = "command: python main.py\ncode: src\n"
    response = api(people.contributor).post(
        JOBS, {"spec": text, "code": tar_of({"main.py": "print(1)"})}, format="multipart"
    )
    assert response.status_code == 201, response.content
    job = Job.objects.get(name=response.json()["name"])
    stored = storages["artifacts"].open(job.uploads["code"]["artifact"])
    with stored, tarfile.open(fileobj=stored) as archive:
        assert archive.getnames() == ["main.py"]


def test_validate_stores_nothing(api, people):
    response = api(people.contributor).post(JOBS + "validate/", {"yaml": HELLO}, format="json")
    assert response.status_code == 200
    assert response.json()["instance_type"] == "defaultinstancetype"
    assert Job.objects.count() == 0


# -- roles and visibility ---------------------------------------------------------------------
def test_reader_sees_but_cannot_submit_or_cancel(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    client = api(people.reader)
    assert client.get(JOBS).json()["count"] == 1
    assert client.post(JOBS, {"yaml": HELLO}, format="json").status_code == 403
    assert client.post(f"{JOBS}{job.name}/cancel/").status_code == 403
    assert Job.objects.count() == 1


def test_stranger_gets_404_everywhere(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    client = api(people.stranger)
    assert client.get("/api/v1/workspaces/").json()["count"] == 0
    for url in (
        JOBS,
        f"{JOBS}{job.name}/",
        f"{JOBS}{job.name}/logs/",
        "/api/v1/workspaces/demo/computes/",
        "/api/v1/workspaces/demo/",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(JOBS, {"yaml": HELLO}, format="json").status_code == 404
    assert client.post(f"{JOBS}{job.name}/cancel/").status_code == 404


def test_anonymous_and_bad_tokens_are_401(api, people):
    assert api(None).get(JOBS).status_code in (401, 403)
    client = api(None)
    client.credentials(HTTP_AUTHORIZATION="Bearer kst_not-a-real-token")
    response = client.get(JOBS)
    assert response.status_code == 401
    assert "kst_not-a-real-token" not in response.content.decode()


def test_cancel_a_queued_job(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    response = api(people.contributor).post(f"{JOBS}{job.name}/cancel/")
    assert response.json()["status"] == "Canceled"
    response = api(people.contributor).post(f"{JOBS}{job.name}/cancel/")
    assert response.status_code == 409
    assert "already ended" in response.json()["detail"]


def test_job_list_filters(api, people, workspace):
    submit_yaml(workspace, people.contributor, HELLO + "experiment_name: a\n")
    submit_yaml(workspace, people.contributor, HELLO + "experiment_name: b\n")
    client = api(people.reader)
    assert client.get(JOBS, {"experiment_name": "a"}).json()["count"] == 1
    assert client.get(JOBS, {"status": "Queued"}).json()["count"] == 2
    assert client.get(JOBS, {"status": "Running"}).json()["count"] == 0


def test_job_list_query_count_is_constant(api, people, workspace):
    client = api(people.reader)
    submit_yaml(workspace, people.contributor, HELLO)
    client.get(JOBS)  # the token's first use is recorded once; not part of the page's cost
    with CaptureQueriesContext(connection) as few:
        client.get(JOBS)
    for _ in range(10):
        submit_yaml(workspace, people.contributor, HELLO)
    with CaptureQueriesContext(connection) as many:
        client.get(JOBS)
    assert len(many.captured_queries) == len(few.captured_queries)


def test_logs_as_text_resume_after_seq(api, people, workspace):
    from compute.backends import LogRecord
    from jobs.services import append_logs

    job = submit_yaml(workspace, people.contributor, HELLO)
    append_logs(
        job, [LogRecord(ts=1.0, stream="stdout", line=f"line {i}") for i in range(1, 4)], {}
    )
    client = api(people.reader)
    response = client.get(f"{JOBS}{job.name}/logs/")
    assert response.content.decode() == "line 1\nline 2\nline 3\n"
    assert response["X-Last-Seq"] == "3"
    response = client.get(f"{JOBS}{job.name}/logs/", {"after": 2})
    assert response.content.decode() == "line 3\n"
    assert client.get(f"{JOBS}{job.name}/logs/", {"after": "x"}).json()["errors"] == [
        {"field": "after", "message": "must be a whole number"}
    ]


# -- compute and instance types ---------------------------------------------------------------
def test_only_it_ops_manage_compute(api, people):
    url = "/api/v1/workspaces/demo/computes/"
    assert api(people.owner).post(url, {"name": "box", "type": "local"}).status_code == 403
    response = api(people.it_ops).post(url, {"name": "box", "type": "local"})
    assert response.status_code == 201, response.content
    assert api(people.reader).get(url + "box/").json()["type"] == "local"
    clash = api(people.it_ops).post(url, {"name": "box", "type": "local"})
    assert clash.json()["errors"][0]["field"] == "name"
    assert api(people.it_ops).delete(url + "box/").status_code == 204
    assert not ComputeTarget.objects.filter(name="box").exists()


def test_compute_with_queued_jobs_cannot_be_deleted(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    response = api(people.it_ops).delete("/api/v1/workspaces/demo/computes/local/")
    assert response.status_code == 409
    assert job.name in response.json()["detail"]  # the jobs in the way, by name
    assert ComputeTarget.objects.filter(name="local").exists()


def test_instance_type_validation_names_fields(api, people):
    url = "/api/v1/instance-types/"
    body = {
        "name": "weird",
        "nodeSelector": {"pool": 3},
        "resources": {
            "requests": {"cpu": "lots", "memory": "4Gi"},
            "limits": {"memory": "2Gi", "tpu": 1},
        },
    }
    response = api(people.it_ops).post(url, body, format="json")
    assert response.status_code == 400
    messages = [e["message"] for e in response.json()["errors"]]
    assert any("resources.requests.cpu" in m and "'lots' is not a quantity" in m for m in messages)
    assert any("resources.limits.tpu: unknown resource" in m for m in messages)
    assert any("resources.requests.memory: must not exceed the limit" in m for m in messages)
    assert any("nodeSelector" in m for m in messages)
    assert not InstanceType.objects.filter(name="weird").exists()


def test_instance_type_crud_in_crd_shape(api, people):
    url = "/api/v1/instance-types/"
    body = {
        "name": "gpu",
        "nodeSelector": {"accelerator": "t4"},
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "4", "nvidia.com/gpu": 1}},
    }
    assert api(people.contributor).post(url, body, format="json").status_code == 403
    assert api(people.it_ops).post(url, body, format="json").status_code == 201
    shown = api(people.reader).get(url + "gpu/").json()
    assert shown["nodeSelector"] == {"accelerator": "t4"}
    assert shown["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_default_instance_type_stays(api, people):
    response = api(people.it_ops).delete("/api/v1/instance-types/defaultinstancetype/")
    assert response.status_code == 409
    default = InstanceType.objects.get(name="defaultinstancetype")
    assert default.resources == {
        "requests": {"cpu": "100m", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }


def test_openapi_schema(api, people):
    response = api(people.reader).get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/workspaces/{workspace}/jobs/" in response.content


def test_unhandled_errors_show_no_traceback(client, people, monkeypatch):
    from jobs import services

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(services, "submit", boom)
    client.raise_request_exception = False
    client.force_login(people.contributor)
    response = client.post(JOBS, {"yaml": HELLO}, content_type="application/json")
    assert response.status_code == 500
    assert b"secret internals" not in response.content
    assert b"Traceback" not in response.content


@pytest.mark.parametrize("upload_name", ["inputs.data"])
def test_local_inputs_need_an_upload(api, people, upload_name):
    text = "command: cat ${{inputs.data}}\ninputs:\n  data: {type: uri_file, path: ./data.csv}\n"
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    assert response.json()["errors"][0]["field"] == "inputs.data.path"
    data = io.BytesIO(b"a,b\n1,2\n")
    data.name = "data.csv"
    response = api(people.contributor).post(
        JOBS, {"spec": text, upload_name: data}, format="multipart"
    )
    assert response.status_code == 201, response.content


def test_upload_for_something_undeclared(workspace, people):
    from jobs.spec import SpecError

    with pytest.raises(SpecError) as info:
        submit_yaml(
            workspace,
            people.contributor,
            HELLO,
            {"inputs.extra": Upload(file=io.BytesIO(b"x"), filename="x")},
        )
    assert info.value.errors[0][0] == "inputs.extra"


def test_first_compute_of_a_workspace_becomes_its_default(api, people):
    from studio.models import Workspace

    Workspace.objects.create(name="fresh")
    url = "/api/v1/workspaces/fresh/computes/"
    assert api(people.it_ops).post(url, {"name": "first", "type": "local"}).status_code == 201
    assert api(people.it_ops).post(url, {"name": "second", "type": "local"}).status_code == 201
    from studio.access import with_default_compute

    assert with_default_compute(Workspace.objects.filter(name="fresh")).get().default_compute == (
        "first"
    )
    defaults = Workspace.objects.get(name="fresh").computes.filter(is_default=True)
    assert [c.name for c in defaults] == ["first"]


def test_a_local_instance_type_name_is_taken_once_whatever_the_clusters_have(api, people, client):
    body = {"name": "cpu-small", "resources": {"requests": {"cpu": "1"}}}
    taken = api(people.it_ops).post("/api/v1/instance-types/", body, format="json")
    assert taken.status_code == 400
    assert taken.json()["errors"] == [
        {"field": "name", "message": "an instance type named 'cpu-small' already exists."}
    ]
    client.force_login(people.it_ops)
    page = client.post("/console/instance-types/new/", {"name": "cpu-small"})
    assert page.status_code == 400 and b"already exists" in page.content
