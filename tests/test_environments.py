"""Environments: documents, conda files read as pip requirements, the API, the CLI, and
jobs that get their own packages on the local compute (built from the host's configured
package index, once, reused)."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from environments.spec import conda_plan
from jobs.spec import SpecError
from studio.documents import DocumentError
from tests.test_controller import controller, finished, history, lines_of, submit
from tests.test_spec import COMPAT, needs_compat

__all__ = ["controller"]


def test_a_conda_file_reads_as_pip_requirements():
    plan = conda_plan(
        {
            "channels": ["conda-forge"],
            "dependencies": [
                "python=3.8.10",
                "pip=21.2.4",
                "numpy=1.22",
                "conda-forge::scipy==1.7.1=py38_0",
                "pandas>=1.3,<2",
                "tqdm 4.62",
                {"pip": ["mlflow==1.20.2", "inference-schema[numpy-support]"]},
            ],
        }
    )
    assert plan.python == "3.8"
    assert plan.requirements == [
        "numpy==1.22.*",
        "scipy==1.7.1",
        "pandas>=1.3,<2",
        "tqdm==4.62.*",
        "mlflow==1.20.2",
        "inference-schema[numpy-support]",
    ]
    assert plan.key == conda_plan({"dependencies": list(reversed([
        "python=3.8", {"pip": ["inference-schema[numpy-support]", "mlflow==1.20.2"]},
        "tqdm 4.62", "pandas>=1.3,<2", "conda-forge::scipy==1.7.1=py38_0", "numpy=1.22",
    ]))}).key  # fmt: skip


def test_a_conda_files_bad_entries_are_named():
    with pytest.raises(DocumentError) as refused:
        conda_plan({"dependencies": ["numpy=", 7, {"pip": ["--extra-index-url x", "a b c"]}]})
    assert dict(refused.value.errors) == {
        "conda_file.dependencies.0": "'numpy=' has no version after '='",
        "conda_file.dependencies.1": "must be a conda package spec or a {pip: [...]} list",
        "conda_file.dependencies.2.pip.0": (
            "pip options are not supported: packages come from the index the host is set up with"
        ),
        "conda_file.dependencies.2.pip.1": refused.value.errors[3][1],
    }
    assert refused.value.errors[3][1].startswith("not a pip requirement")


@needs_compat
def test_azures_example_environments_register(api, people):
    base = COMPAT / "cli" / "assets" / "environment"
    writer = api(people.contributor)
    for name in ("docker-image.yml", "docker-image-plus-conda.yaml"):
        document = yaml.safe_load((base / name).read_text())
        if "conda_file" in document:
            document["conda_file"] = yaml.safe_load((base / document["conda_file"]).read_text())
        made = writer.post("/api/v1/workspaces/demo/environments/", document, format="json")
        assert made.status_code == 201, made.content
    shown = writer.get(
        "/api/v1/workspaces/demo/environments/docker-image-plus-conda-example/versions/latest/"
    ).json()
    assert shown["image"] == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04"
    assert shown["conda_file"]["dependencies"][0] == "python=3.8"


def test_environments_are_versioned_and_refused_by_field(api, people):
    writer = api(people.contributor)
    url = "/api/v1/workspaces/demo/environments/"
    document = {"name": "tiny", "image": "python:3.11-slim"}
    assert writer.post(url, document, format="json").json()["version"] == "1"
    assert writer.post(url, document, format="json").json()["version"] == "2"
    again = writer.post(url, {**document, "version": "1"}, format="json")
    assert again.status_code == 409
    assert [v["version"] for v in writer.get(url + "tiny/").json()] == ["2", "1"]
    assert writer.get(url).json()[0]["versions"] == 2
    cases = [
        ({"name": "x", "conda_file": "./conda.yml"}, "conda_file", "send the conda file's content"),
        ({"name": "x", "image": "i", "os_type": "windows"}, "os_type", "only linux"),
        ({"name": "x"}, "(document)", "give an image, a conda_file or a build context"),
        ({"name": "x", "build": {"path": "ctx"}}, "build.path", "uploaded with the environment"),
        ({"name": "x", "image": "i", "colour": 1}, "colour", "unknown field"),
        ({"image": "i"}, "name", "is required"),
        ({"name": "x", "conda_file": {"dependencies": ["numpy="]}}, "conda_file.dependencies.0",
         "no version"),
    ]  # fmt: skip
    for body, field, message in cases:
        response = writer.post(url, body, format="json")
        assert response.status_code == 400, body
        errors = {e["field"]: e["message"] for e in response.json()["errors"]}
        assert message in errors.get(field, ""), (body, errors)
    assert api(people.reader).post(url, document, format="json").status_code == 403


def test_the_cli_registers_an_environment_with_its_conda_file(kstudio, tmp_path):
    (tmp_path / "conda.yml").write_text("dependencies:\n  - python=3.11\n  - pip:\n    - toolz\n")
    (tmp_path / "env.yml").write_text("name: cli-env\nimage: python:3.11\nconda_file: conda.yml\n")
    kstudio("environment", "create", "-f", str(tmp_path / "env.yml"), check=True)
    shown = json.loads(kstudio("environment", "show", "cli-env@latest", "-o", "json",
                               check=True).stdout)  # fmt: skip
    assert shown["conda_file"]["dependencies"][1] == {"pip": ["toolz"]}
    assert "cli-env" in kstudio("environment", "list", check=True).stdout
    (tmp_path / "bad.yml").write_text("name: bad\nconda_file: missing.yml\n")
    refused = kstudio("environment", "create", "-f", str(tmp_path / "bad.yml"))
    assert refused.returncode == 2
    assert "conda_file: cannot read" in refused.stderr


CONDA_JOB = """
command: python -c "import termcolor, sys; print('ok', sys.version_info[0])"
environment:
  image: python:3.11-slim
  conda_file:
    dependencies:
      - python=3.4
      - pip:
        - termcolor
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db_thread")
async def test_a_conda_file_builds_once_is_reused_and_a_bad_package_fails(
    workspace, people, controller
):
    # Two jobs needing the same environment at once: one builds it, the other waits.
    first, second = [await submit(workspace, people.contributor, CONDA_JOB) for _ in range(2)]
    first, second = await asyncio.gather(finished(first, 120), finished(second, 120))
    logs = [await lines_of(first), await lines_of(second)]
    for job, lines in zip((first, second), logs, strict=True):
        assert job.status == "Completed", (job.failure_reason, lines)
        assert lines[-1] == "ok 3"
        assert any("python=3.4 was asked for; this host has no python3.4" in x for x in lines)
    building = [x for lines in logs for x in lines if "environment: building inline" in x]
    assert len(building) == 1, logs
    assert any("Successfully installed termcolor" in x for lines in logs for x in lines)
    assert first.environment_used["requirements"] == ["termcolor"]

    # A third, later: reused, nothing installed.
    third = await finished(await submit(workspace, people.contributor, CONDA_JOB), 60)
    lines = await lines_of(third)
    assert any("environment: reusing inline" in x for x in lines), lines
    assert not any("Successfully installed" in x for x in lines)

    bad = CONDA_JOB.replace("- termcolor", "- kstudio-no-such-package-here==1.0")
    failed = await finished(await submit(workspace, people.contributor, bad), 120)
    assert failed.status == "Failed"
    assert "installing the packages failed" in failed.failure_reason
    assert "kstudio-no-such-package-here" in failed.failure_reason
    assert "Preparing" in await history(failed)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db_thread")
async def test_jobs_name_registered_and_curated_environments(workspace, people, controller):
    from asgiref.sync import sync_to_async

    from environments.services import create_environment

    await sync_to_async(create_environment)(
        workspace, people.contributor, {"name": "plain", "image": "python:3.11-slim"}
    )
    text = "command: echo hi\nenvironment: azureml:plain@latest\n"
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed"
    assert (job.environment_used["label"], job.environment_used["image"]) == (
        "plain:1", "python:3.11-slim",
    )  # fmt: skip
    curated = "azureml://registries/azureml/environments/sklearn-1.5/labels/latest"
    job = await finished(
        await submit(workspace, people.contributor, f"command: echo hi\nenvironment: {curated}\n")
    )
    lines = await lines_of(job)
    assert job.status == "Completed", lines
    assert job.environment_used["curated"] is True
    assert any("sklearn-1.5 is a stand-in" in x for x in lines)
    assert any("runs in the host's Python" in x for x in lines)

    with pytest.raises(SpecError) as refused:
        await submit(workspace, people.contributor, "command: echo\nenvironment: azureml:nope:3\n")
    assert dict(refused.value.errors) == {
        "environment": "no environment named 'nope' in this workspace"
    }
    with pytest.raises(SpecError) as refused:
        await submit(workspace, people.contributor,
                     "command: echo\nenvironment: azureml:AzureML-cobol-1@latest\n")  # fmt: skip
    assert "not a curated environment" in dict(refused.value.errors)["environment"]
