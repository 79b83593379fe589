"""Bounded input: documents, bodies, archives, list pages, log pages, odd log lines."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest
from rest_framework.parsers import MultiPartParser

from compute.backends import LogRecord
from jobs.models import Job, LogLine
from jobs.services import append_logs, submit_yaml
from tests.test_api import HELLO, JOBS, tar_of

pytestmark = pytest.mark.django_db

BOMB = "command: echo hi\ntags:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_at_once(api, people):
    assert len(BOMB) < 500
    response = api(people.contributor).post(JOBS, {"yaml": BOMB}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "(document)", "message": "expands to more than 100,000 values (aliases included)"}
    ]
    assert not Job.objects.exists()


def test_aliases_within_bounds_still_work(api, people):
    text = "command: echo ${{inputs.a}}\ninputs: &in {a: 1}\ntags: {copy: yes}\n"
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    assert response.status_code == 201, response.content


def test_deeply_nested_json_is_a_400(api, people):
    body = '{"command": "echo", "tags": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = api(people.contributor).post(JOBS, body, content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in json.dumps(response.json())


def test_nested_json_within_python_limits_is_bounded_too(api, people):
    body = '{"command": "echo", "tags": {"a": ' + "[" * 200 + "]" * 200 + "}}"
    response = api(people.contributor).post(JOBS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "(document)", "message": "is nested deeper than 64 levels"}
    ]


@pytest.mark.parametrize("route", [JOBS, JOBS + "validate/"])
def test_a_lone_surrogate_in_json_is_refused_by_field_on_submit_and_validate(api, people, route):
    body = '{"command": "echo", "description": "x\\ud800y"}'
    response = api(people.contributor).post(route, body, content_type="application/json")
    assert response.status_code == 400, response.content
    (error,) = response.json()["errors"]
    assert error["field"] == "description" and "lone surrogate" in error["message"]
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ('command: "echo \\0 hi"\n', "command"),
        ('command: echo\nenvironment_variables: {A: "x\\0"}\n', "environment_variables.A"),
        ('command: echo\nexperiment_name: "e\\0"\n', "experiment_name"),
    ],
)
def test_nul_bytes_in_yaml_are_refused_by_field(api, people, document, field):
    """They were kept, and the job failed later as a process that 'ended unexpectedly'."""
    response = api(people.contributor).post(JOBS, {"yaml": document}, format="json")
    assert response.status_code == 400, response.content
    (error,) = response.json()["errors"]
    assert error["field"] == field
    assert "NUL character" in error["message"]
    assert not Job.objects.exists()


def test_a_nul_in_a_json_document_is_refused_by_field(api, people):
    body = json.dumps({"command": "echo", "environment_variables": {"A": "x\x00"}})
    response = api(people.contributor).post(JOBS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "field": "environment_variables.A",
            "message": "must not contain a NUL character (\\u0000)",
        }
    ]


def test_a_body_over_the_limit_is_413_before_it_is_read(api, people, settings):
    settings.STUDIO_MAX_REQUEST_BYTES = 1000
    text = HELLO + "description: " + "x" * 2000 + "\n"
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    assert response.status_code == 413
    (error,) = response.json()["errors"]
    assert error["field"] == "(request)"
    assert "1,000 bytes" in error["message"] and "STUDIO_MAX_REQUEST_BYTES" in error["message"]
    assert not Job.objects.exists()


def test_an_upload_over_the_limit_is_413(api, people, settings):
    settings.STUDIO_MAX_UPLOAD_BYTES = 10_000
    code = io.BytesIO(b"\0" * 20_000)
    code.name = "code.tar.gz"
    response = api(people.contributor).post(
        JOBS, {"spec": "command: ls\ncode: src\n", "code": code}, format="multipart"
    )
    assert response.status_code == 413
    assert "STUDIO_MAX_UPLOAD_BYTES" in response.json()["errors"][0]["message"]


def test_the_submit_page_answers_413_too(client, people, settings):
    """A form's text fields count against the request limit (its files against uploads)."""
    settings.STUDIO_MAX_REQUEST_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client.force_login(people.contributor)
    response = client.post("/workspaces/demo/jobs/new/", {"spec": "x" * 5000})
    assert response.status_code == 413
    assert "larger than this studio accepts" in response.content.decode()


def test_a_strangers_body_is_never_parsed(api, people, monkeypatch):
    parsed = []
    original = MultiPartParser.parse

    def spy(self, *args, **kwargs):
        parsed.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiPartParser, "parse", spy)
    code = tar_of({"main.py": "print(1)\n" * 10_000})
    response = api(people.stranger).post(
        JOBS, {"spec": "command: ls\ncode: src\n", "code": code}, format="multipart"
    )
    assert response.status_code == 404
    assert parsed == []
    response = api(people.reader).post(
        JOBS, {"spec": "command: ls\ncode: src\n", "code": code}, format="multipart"
    )
    assert response.status_code == 403
    assert parsed == []


def tar_with(count: int, size: int = 0) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for i in range(count):
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            archive.addfile(info, io.BytesIO(b"\0" * size))
    buffer.seek(0)
    buffer.name = "code.tar.gz"
    return buffer


def test_archives_with_too_many_members_are_refused(api, people, settings):
    settings.STUDIO_MAX_ARCHIVE_MEMBERS = 50
    response = api(people.contributor).post(
        JOBS, {"spec": "command: ls\ncode: src\n", "code": tar_with(51)}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "code", "message": "the archive has more than 50 members"}
    ]
    assert not Job.objects.exists()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archives_that_unpack_too_big_are_refused(api, people, settings, kind):
    settings.STUDIO_MAX_ARCHIVE_BYTES = 100_000
    if kind == "tar":
        archive = tar_with(2, 60_000)
    else:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("a", b"\0" * 200_000)  # a few hundred bytes compressed
        archive.seek(0)
        archive.name = "code.zip"
    response = api(people.contributor).post(
        JOBS, {"spec": "command: ls\ncode: src\n", "code": archive}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "code", "message": "the archive unpacks to more than 100,000 bytes"}
    ]


def test_list_limit_is_capped(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    fields = {
        f.name: getattr(job, f.name)
        for f in Job._meta.concrete_fields
        if f.name not in ("id", "run_id")
    }
    Job.objects.bulk_create([Job(**{**fields, "name": f"job-{i}"}) for i in range(505)])
    body = api(people.reader).get(JOBS, {"limit": 100_000}).json()
    assert body["count"] == 506
    assert len(body["results"]) == 500
    assert "limit=500" in body["next"]


def test_the_logs_api_comes_in_pages(api, people, workspace):
    job = submit_yaml(workspace, people.contributor, HELLO)
    append_logs(job, [LogRecord(ts=1.0, stream="stdout", line=f"l{i}") for i in range(25)], {})
    client = api(people.reader)
    first = client.get(f"{JOBS}{job.name}/logs/", {"limit": 10})
    assert first.content.decode().splitlines() == [f"l{i}" for i in range(10)]
    assert (first["X-Last-Seq"], first["X-More"]) == ("10", "true")
    last = client.get(f"{JOBS}{job.name}/logs/", {"after": 20, "limit": 10})
    assert last.content.decode().splitlines() == [f"l{i}" for i in range(20, 25)]
    assert (last["X-Last-Seq"], last["X-More"]) == ("25", "false")


def test_log_lines_with_nul_and_odd_streams_are_stored(people, workspace):
    """PostgreSQL refuses NUL in text: such a line must not stop the controller."""
    job = submit_yaml(workspace, people.contributor, HELLO)
    records = [
        LogRecord(ts=1.0, stream="stdout", line="a\x00b"),
        LogRecord(ts=1.0, stream="weird", line="lone \udc80 surrogate"),
    ]
    assert append_logs(job, records, {"offset": 1}) == 2
    stored = list(LogLine.objects.filter(job=job).order_by("seq").values_list("stream", "line"))
    assert stored == [("stdout", "a\ufffdb"), ("stdout", "lone ? surrogate")]


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "[::1]", "10.1.2.3"])
def test_an_input_from_an_inward_address_is_refused_at_submit(api, people, host):
    text = f"command: cat ${{{{inputs.f}}}}\ninputs: {{f: {{type: uri_file, path: 'http://{host}/x'}}}}\n"
    response = api(people.contributor).post(JOBS, {"yaml": text}, format="json")
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "inputs.f.path"
    assert "STUDIO_ALLOWED_INPUT_NETWORKS" in error["message"]
    assert not Job.objects.exists()


def test_an_allowed_network_may_be_an_input(api, people, settings):
    settings.STUDIO_ALLOWED_INPUT_NETWORKS = ["10.0.0.0/8"]
    text = "command: cat ${{inputs.f}}\ninputs: {f: {type: uri_file, path: 'http://10.1.2.3/x'}}\n"
    assert api(people.contributor).post(JOBS, {"yaml": text}, format="json").status_code == 201


MLFLOW = "/workspaces/demo/mlflow/api/2.0/mlflow/"


def _mlflow(client, people, endpoint: str, body: str):
    from tests.conftest import token_for

    return client.post(MLFLOW + endpoint, body, content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token_for(people.contributor)}")  # fmt: skip


@pytest.fixture
def run(workspace):
    from tracking.models import Experiment, Run

    return Run.objects.create(experiment=Experiment.objects.create(workspace=workspace, name="e"))


@pytest.mark.parametrize(
    ("endpoint", "fields", "named"),
    [
        ("runs/log-metric", '"key": "m", "value": 1, "timestamp": 1e26', "timestamp"),
        ("runs/log-metric", '"key": "m", "value": 1, "timestamp": 1, "step": ' + "9" * 26, "step"),
        ("runs/log-metric", '"key": "m", "value": 1, "timestamp": 1, "step": "abc"', "step"),
        ("runs/update", '"end_time": 100000000000000000000000000', "end_time"),
        ("runs/outputs", '"models": [{"model_id": "m-1", "step": "abc"}]', "step"),
    ],
)
def test_mlflow_numbers_that_are_not_int64_are_mlflows_400(client, people, run, endpoint,
                                                            fields, named):  # fmt: skip
    if endpoint == "runs/outputs":
        from tracking.models import LoggedModel

        LoggedModel.objects.create(model_id="m-1", experiment=run.experiment, name="m",
                                   created_at=1, updated_at=1)  # fmt: skip
    response = _mlflow(client, people, endpoint, f'{{"run_id": "{run.run_id}", {fields}}}')
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"for parameter '{named}' supplied" in body["message"]


def test_mlflow_run_create_with_a_huge_start_time_is_a_400(client, people, run):
    body = f'{{"experiment_id": "{run.experiment_id}", "start_time": 1{"0" * 26}}}'
    response = _mlflow(client, people, "runs/create", body)
    assert response.status_code == 400
    assert "'start_time'" in response.json()["message"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_mlflow_bodies_are_a_400(client, people, run, depth):
    body = f'{{"run_id": "{run.run_id}", "key": "t", "value": ' + "[" * depth + "]" * depth + "}"
    response = _mlflow(client, people, "runs/set-tag", body)
    assert response.status_code == 400
    assert response.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


def test_a_nul_in_an_mlflow_tag_is_a_400_naming_it(client, people, run):
    body = json.dumps({"run_id": run.run_id, "key": "t", "value": "a\x00b"})
    response = _mlflow(client, people, "runs/set-tag", body)
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Invalid value for 'value': must not contain a NUL character (\\u0000)",
    }
    assert run.tags == {}
