"""Studio and console pages: roles, validation shown inline, constant query counts."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from compute.models import ComputeTarget, InstanceType
from jobs.models import Job
from jobs.services import submit_yaml

HELLO = "command: echo hi\n"


def submit_form(client, spec: str, instance_type: str = "defaultinstancetype", **files):
    """Post the submit form as the browser does."""
    fields = {"compute": "local", "instance_type": instance_type, "spec": spec, **files}
    return client.post("/workspaces/demo/jobs/new/", fields)


@pytest.fixture
def signed_in(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def test_login_required(client, workspace):
    response = client.get("/workspaces/demo/jobs/")
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_job_list_is_constant_in_queries(signed_in, people, workspace):
    client = signed_in(people.reader)
    submit_yaml(workspace, people.contributor, HELLO)
    client.get("/workspaces/demo/jobs/")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/workspaces/demo/jobs/").status_code == 200
    for _ in range(30):
        submit_yaml(workspace, people.contributor, HELLO)
    with CaptureQueriesContext(connection) as many:
        response = client.get("/workspaces/demo/jobs/")
    assert len(many.captured_queries) == len(few.captured_queries)
    assert response.content.count(b'id="job-row-') == 25  # one page
    assert b"Page 1 of 2" in response.content


def test_job_list_filters_and_htmx_partial(signed_in, people, workspace):
    submit_yaml(workspace, people.contributor, HELLO + "experiment_name: alpha\n")
    submit_yaml(workspace, people.contributor, HELLO + "experiment_name: beta\n")
    client = signed_in(people.reader)
    response = client.get("/workspaces/demo/jobs/?experiment=alpha", HTTP_HX_REQUEST="true")
    assert b"<html" not in response.content  # the partial only
    assert response.content.count(b'id="job-row-') == 1


def test_job_detail_shows_spec_timings_and_notes(signed_in, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO + "display_name: Shown\n")
    response = signed_in(people.reader).get(f"/workspaces/demo/jobs/{job.name}/")
    text = response.content.decode()
    assert "Shown" in text and "Queued" in text and "echo hi" in text
    assert "not enforced on local compute" in text
    assert "Cancel job" not in text  # readers cannot cancel


def test_cancel_from_the_page(signed_in, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    client = signed_in(people.reader)
    assert client.post(f"/workspaces/demo/jobs/{job.name}/cancel/").status_code == 403
    client = signed_in(people.contributor)
    response = client.post(f"/workspaces/demo/jobs/{job.name}/cancel/", follow=True)
    assert b"Cancel requested" in response.content
    job.refresh_from_db()
    assert job.status == "Canceled"


def test_stranger_gets_404_on_pages(signed_in, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    client = signed_in(people.stranger)
    for url in (
        "/workspaces/demo/jobs/",
        f"/workspaces/demo/jobs/{job.name}/",
        "/workspaces/demo/jobs/new/",
        f"/workspaces/demo/jobs/{job.name}/outputs/default/",
    ):
        assert client.get(url).status_code == 404, url


def test_submit_form_errors_inline_and_nothing_stored(signed_in, people, workspace):
    client = signed_in(people.contributor)
    response = submit_form(client, "command: echo ${{inputs.x}}\nlimits: {timeout: zero}\n")
    assert response.status_code == 400
    text = response.content.decode()
    assert "<code>limits.timeout</code>" in text
    assert "inputs.x" in text
    assert Job.objects.count() == 0


def test_submit_form_uses_the_chosen_compute_and_instance_type(signed_in, people, workspace):
    client = signed_in(people.contributor)
    response = submit_form(client, HELLO, instance_type="cpu-large")
    job = Job.objects.get()
    assert response.status_code == 302 and response.url.endswith(f"/jobs/{job.name}/")
    assert job.instance_type == "cpu-large"
    assert job.resources["limits"] == {"cpu": "4", "memory": "8Gi"}


def test_console_is_for_it_ops(signed_in, people):
    assert signed_in(people.owner).get("/console/").status_code == 403
    response = signed_in(people.it_ops).get("/console/")
    assert response.status_code == 200
    assert b"defaultinstancetype" in response.content


def test_console_instance_type_form_validates_each_quantity(signed_in, people):
    client = signed_in(people.it_ops)
    response = client.post(
        "/console/instance-types/new/",
        {
            "name": "gpu-box",
            "requests_cpu": "fast",
            "limits_memory": "1Gi",
            "requests_memory": "2Gi",
            "node_selector_text": "pool: [a",
        },
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert "requests_cpu" in form.errors and "requests_memory" in form.errors
    assert "node_selector_text" in form.errors
    assert not InstanceType.objects.filter(name="gpu-box").exists()
    response = client.post(
        "/console/instance-types/new/",
        {
            "name": "gpu-box",
            "requests_cpu": "2",
            "limits_cpu": "4",
            "limits_gpu": "1",
            "node_selector_text": "accelerator: nvidia-t4\n",
        },
    )
    assert response.status_code == 302
    saved = InstanceType.objects.get(name="gpu-box")
    assert saved.node_selector == {"accelerator": "nvidia-t4"}
    assert saved.resources == {
        "requests": {"cpu": "2"},
        "limits": {"cpu": "4", "nvidia.com/gpu": "1"},
    }


def test_console_compute_targets(signed_in, people, workspace):
    client = signed_in(people.it_ops)
    response = client.post(
        "/console/workspaces/demo/computes/new/", {"name": "local", "kind": "local"}
    )
    assert response.status_code == 400 and "already exists" in response.content.decode()
    client.post("/console/workspaces/demo/computes/new/", {"name": "box2", "kind": "local"})
    assert ComputeTarget.objects.filter(workspace=workspace, name="box2").exists()
    client.post("/console/workspaces/demo/computes/box2/delete/")
    assert not ComputeTarget.objects.filter(name="box2").exists()


def test_console_refuses_deleting_the_default_instance_type(signed_in, people):
    response = signed_in(people.it_ops).post(
        "/console/instance-types/defaultinstancetype/delete/", follow=True
    )
    assert b"edit it instead of deleting it" in response.content
    assert InstanceType.objects.filter(name="defaultinstancetype").exists()


def test_createtoken_command(db, workspace):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "createtoken",
        "dana",
        "--create",
        "--workspace",
        "demo",
        "--role",
        "reader",
        "--it-ops",
        stdout=out,
    )
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("kst_")
    from studio.auth import user_for_key

    user = user_for_key(token)
    assert user.username == "dana" and user.groups.filter(name="it-ops").exists()
    assert user.memberships.get().role == "reader"


def test_seed_is_idempotent_and_prints_the_password_once(db, monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    monkeypatch.delenv("STUDIO_ADMIN_PASSWORD", raising=False)
    first, second = StringIO(), StringIO()
    call_command("seed", stdout=first)
    call_command("seed", stdout=second)
    assert "password:" in first.getvalue()
    assert second.getvalue() == ""
    assert ComputeTarget.objects.filter(workspace__name="demo", name="local").count() == 1
    assert set(InstanceType.objects.values_list("name", flat=True)) >= {
        "defaultinstancetype",
        "cpu-small",
        "cpu-large",
    }


LOCAL_INPUT_JOB = (
    "command: cat ${{inputs.data}}\ninputs:\n  data: {type: uri_file, path: ./data.csv}\n"
    "  remote: {type: uri_file, path: 'https://example.org/x.csv'}\n  n: 3\n"
)


def test_form_asks_for_a_file_per_local_input(signed_in, people, workspace):
    client = signed_in(people.contributor)
    response = client.post("/workspaces/demo/jobs/new/local-inputs/", {"spec": LOCAL_INPUT_JOB})
    text = response.content.decode()
    assert 'name="inputs.data"' in text
    assert "inputs.remote" not in text and "inputs.n" not in text
    broken = client.post("/workspaces/demo/jobs/new/local-inputs/", {"spec": "command: ["})
    assert broken.status_code == 200 and "inputs." not in broken.content.decode()
    reader = signed_in(people.reader)
    assert reader.post("/workspaces/demo/jobs/new/local-inputs/", {"spec": ""}).status_code == 403


def test_form_submits_local_input_files(signed_in, people, workspace):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = signed_in(people.contributor)
    spec = LOCAL_INPUT_JOB.replace(
        "  remote: {type: uri_file, path: 'https://example.org/x.csv'}\n", ""
    )
    response = submit_form(
        client, spec, **{"inputs.data": SimpleUploadedFile("data.csv", b"a,b\n")}
    )
    assert response.status_code == 302, response.content.decode()
    job = Job.objects.get()
    from pathlib import Path

    assert (Path(job.upload_dir) / "inputs.data").read_bytes() == b"a,b\n"
