"""Studio and console pages: roles, validation shown inline, constant query counts."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from compute.models import ComputeTarget, InstanceType
from jobs.models import Job
from jobs.services import submit_yaml

HELLO = "command: echo hi\n"


def submit_form(client, spec: str, instance_type: str = "", compute: str = "", **files):
    """Post the submit form as the browser does ("": left at "as in the YAML")."""
    fields = {"compute": compute, "instance_type": instance_type, "spec": spec, **files}
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
    response = client.get("/workspaces/demo/jobs/?experiment_name=alpha", HTTP_HX_REQUEST="true")
    assert b"<html" not in response.content  # the partial only
    assert response.content.count(b'id="job-row-') == 1


def rows(response) -> list[str]:
    """The job names of a job list page, in order."""
    import re

    return re.findall(r'data-job="([^"]+)"', response.content.decode())


def test_job_search_is_partial_and_case_insensitive_page_and_api(signed_in, people, workspace, api):
    a = submit_yaml(workspace, people.contributor, "name: Train-ResNet\ncommand: echo\n")
    b = submit_yaml(workspace, people.contributor, "name: b1\nexperiment_name: ImageNet\n" + HELLO)
    c = submit_yaml(workspace, people.contributor, "name: c1\ndisplay_name: Tiny NET\n" + HELLO)
    d = submit_yaml(workspace, people.contributor, "name: d1\ntags: {team: vision}\n" + HELLO)
    client = signed_in(people.reader)
    assert set(rows(client.get("/workspaces/demo/jobs/?q=net"))) == {a.name, b.name, c.name}
    assert rows(client.get("/workspaces/demo/jobs/?q=VISION")) == [d.name]
    found = api(people.reader).get("/api/v1/workspaces/demo/jobs/", {"q": "net"}).json()
    assert {job["name"] for job in found["results"]} == {a.name, b.name, c.name}


def test_job_list_sorts_by_column_both_ways(signed_in, people, workspace, api):
    for name in ("bravo", "alpha", "charlie"):
        submit_yaml(workspace, people.contributor, f"name: {name}\n" + HELLO)
    client = signed_in(people.reader)
    assert rows(client.get("/workspaces/demo/jobs/")) == ["charlie", "alpha", "bravo"]  # newest
    page = client.get("/workspaces/demo/jobs/?ordering=name")
    assert rows(page) == ["alpha", "bravo", "charlie"]
    assert b'aria-sort="ascending"' in page.content
    assert b"ordering=-name" in page.content  # a second click reverses
    assert rows(client.get("/workspaces/demo/jobs/?ordering=-name")) == [
        "charlie",
        "bravo",
        "alpha",
    ]
    listed = api(people.reader).get("/api/v1/workspaces/demo/jobs/", {"ordering": "name"}).json()
    assert [job["name"] for job in listed["results"]] == ["alpha", "bravo", "charlie"]
    bad = api(people.reader).get("/api/v1/workspaces/demo/jobs/", {"ordering": "secret"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "ordering"


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


def test_submit_form_honours_the_yamls_compute_and_instance_type(signed_in, people, workspace):
    client = signed_in(people.contributor)
    response = submit_form(
        client, HELLO + "compute: azureml:local\nresources: {instance_type: cpu-small}\n"
    )
    assert response.status_code == 302
    assert Job.objects.get().instance_type == "cpu-small"


def test_submit_form_refuses_what_the_yaml_asks_and_is_not_offered(signed_in, people, workspace):
    client = signed_in(people.contributor)
    response = submit_form(
        client, HELLO + "compute: azureml:gpu-cluster\nresources: {instance_type: gpu-huge}\n"
    )
    assert response.status_code == 400
    text = response.content.decode()
    assert "no compute target named &#x27;gpu-cluster&#x27;" in text
    assert Job.objects.count() == 0
    response = submit_form(client, HELLO + "resources: {instance_type: gpu-huge}\n")
    assert "instance type &#x27;gpu-huge&#x27; is not offered" in response.content.decode()
    assert Job.objects.count() == 0


def test_a_refused_uploaded_yaml_stays_in_the_editor(signed_in, people, workspace):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = signed_in(people.contributor)
    text = "command: echo hi\nlimits:\n  timeout: [oops\n"
    upload = SimpleUploadedFile("job.yml", text.encode())
    response = submit_form(client, "", spec_file=upload)
    assert response.status_code == 400
    page = response.content.decode()
    assert "line 4" in page or "line 3" in page
    assert "timeout: [oops" in page  # the editor holds the file's text


def test_console_is_for_it_ops(signed_in, people):
    assert signed_in(people.owner).get("/console/").status_code == 403
    response = signed_in(people.it_ops).get("/console/")
    assert response.status_code == 200
    assert b"defaultinstancetype" in response.content


def test_console_shows_running_and_waiting_jobs_per_target_and_type(signed_in, people, workspace):
    import re

    from jobs.models import Status

    jobs = [
        submit_yaml(workspace, people.contributor, HELLO + f"resources: {{instance_type: {t}}}\n")
        for t in ("cpu-small", "cpu-small", "cpu-small", "cpu-large")
    ]
    Job.objects.filter(pk__in=[jobs[0].pk, jobs[3].pk]).update(status=Status.RUNNING)
    Job.objects.filter(pk=jobs[2].pk).update(status=Status.COMPLETED)
    page = signed_in(people.it_ops).get("/console/").content.decode()

    def counts(row_start: str) -> tuple[str, str]:
        row = page[page.index(row_start) :]
        running = re.search(r"<td data-running>(\d+)</td><td data-waiting>(\d+)</td>", row)
        return running[1], running[2]

    assert counts(">cpu-small</a>") == ("1", "1")
    assert counts(">cpu-large</a>") == ("1", "0")
    assert counts(">defaultinstancetype</a>") == ("0", "0")
    assert counts(">local</a>") == ("2", "1")


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
        "limits": {"cpu": "4", "nvidia.com/gpu": 1},  # a count, as the CRD has it
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
    from django.core.files.storage import storages

    assert job.uploads["inputs.data"]["filename"] == "data.csv"
    with storages["artifacts"].open(job.uploads["inputs.data"]["artifact"]) as stored:
        assert stored.read() == b"a,b\n"


@pytest.mark.parametrize("path", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_api_reference_is_served_without_a_cdn(signed_in, people, path):
    import re

    page = signed_in(people.reader).get(path)
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.content.decode())
    assert sources and all(s.startswith("/static/drf_spectacular_sidecar/") for s in sources)


def test_job_list_shows_a_chosen_metrics_latest_value_in_constant_queries(
    signed_in, people, workspace
):
    from tracking import services as tracking
    from tracking.models import Experiment, Run

    client = signed_in(people.reader)
    experiment = Experiment.objects.create(workspace=workspace, name="fits")
    jobs = [submit_yaml(workspace, people.contributor, HELLO) for _ in range(3)]
    for value, job in zip((0.25, float("nan"), None), jobs, strict=True):
        run_id = job.run_id
        run = Run.objects.create(experiment=experiment, run_id=run_id)
        if value is not None:
            tracking.log_batch(run, [{"key": "loss", "value": value, "timestamp": 1}], [], [])
    with CaptureQueriesContext(connection) as few:
        page = client.get("/workspaces/demo/jobs/?metric=loss").content.decode()
    cells = {job.name: page.split(f'id="job-row-{job.name}"')[1].split("</tr>")[0] for job in jobs}
    assert '<td class="number" data-metric>0.25</td>' in cells[jobs[0].name]
    assert "NaN" in cells[jobs[1].name]
    assert "—" in cells[jobs[2].name]
    assert '<option value="loss">' in page  # offered as a choice
    for _ in range(10):
        submit_yaml(workspace, people.contributor, HELLO)
    with CaptureQueriesContext(connection) as many:
        client.get("/workspaces/demo/jobs/?metric=loss")
    assert len(many.captured_queries) == len(few.captured_queries)
    # A row refreshed on its own keeps the column.
    row = client.get(f"/workspaces/demo/jobs/{jobs[0].name}/row/?metric=loss").content.decode()
    assert "0.25" in row and "?metric=loss" in row
    assert "data-metric" not in client.get("/workspaces/demo/jobs/").content.decode()


@pytest.mark.parametrize(("page", "kind"), [("data", "uri_file"), ("models", "custom_model")])
def test_registering_a_version_from_its_page_and_a_taken_version_named_by_field(
    signed_in, people, workspace, page, kind
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = signed_in(people.contributor)

    def register() -> Any:
        upload = SimpleUploadedFile("iris.csv", b"a,b\n1,2\n")
        form = {"name": "iris", "version": "1", "type": kind, "upload": upload}
        return client.post(f"/workspaces/demo/{page}/new/", form)

    assert register().status_code == 302
    again = register()
    assert again.status_code == 400
    assert "<code>version</code>: " in again.content.decode()
    assert "iris:1 already exists" in again.content.decode()
