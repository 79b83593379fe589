"""`kstudio` against a live studio: the commands a data scientist types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import token_for
from tests.test_spec import BASICS, needs_compat

pytestmark = pytest.mark.django_db(transaction=True)


@needs_compat
def test_hello_world_create_stream_show(kstudio):
    result = kstudio("job", "create", "-f", str(BASICS / "hello-world.yml"), "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello world"]
    assert "ended: Completed" in result.stderr
    listed = json.loads(kstudio("job", "list", "-o", "json", check=True).stdout)
    assert [job["status"] for job in listed] == ["Completed"]
    shown = json.loads(kstudio("job", "show", listed[0]["name"], "-o", "json", check=True).stdout)
    for field in (
        "name",
        "status",
        "display_name",
        "experiment_name",
        "compute",
        "creation_context",
        "services",
    ):
        assert field in shown
    table = kstudio("job", "show", listed[0]["name"], check=True).stdout
    assert "Completed" in table and listed[0]["name"] in table


def test_stream_exits_nonzero_when_the_job_fails(kstudio, tmp_path):
    (tmp_path / "job.yml").write_text("command: echo before; exit 4\n")
    result = kstudio("job", "create", "-f", str(tmp_path / "job.yml"), "--stream")
    assert result.returncode == 1
    assert "before" in result.stdout
    assert "ended: Failed" in result.stderr


def test_code_folder_inputs_set_and_download(kstudio, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(
        "import sys, pathlib\n"
        "text = pathlib.Path(sys.argv[1]).read_text().strip()\n"
        "print('read', text)\n"
        "pathlib.Path('outputs/result.txt').write_text(text * 2)\n"
        "pathlib.Path(sys.argv[2], 'model.txt').write_text('weights')\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("abc")
    (tmp_path / "job.yml").write_text(
        "command: python train.py ${{inputs.data}}/in.txt ${{outputs.model}}\n"
        "code: src\n"
        "inputs:\n  data: {type: uri_folder, path: ./data}\n"
        "outputs:\n  model: {type: uri_folder}\n"
        "experiment_name: first\n"
    )
    result = kstudio(
        "job",
        "create",
        "-f",
        str(tmp_path / "job.yml"),
        "--set",
        "experiment_name=second",
        "--name",
        "cli_job",
        "--stream",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "read abc"
    shown = json.loads(kstudio("job", "show", "cli_job", "-o", "json", check=True).stdout)
    assert shown["experiment_name"] == "second"
    target = tmp_path / "download"
    kstudio("job", "download", "cli_job", "--download-path", str(target), check=True)
    assert (target / "artifacts" / "outputs" / "result.txt").read_text() == "abcabc"
    kstudio(
        "job",
        "download",
        "cli_job",
        "--output-name",
        "model",
        "--download-path",
        str(target),
        check=True,
    )
    assert (target / "named-outputs" / "model" / "model.txt").read_text() == "weights"


def test_invalid_jobs_exit_2_with_every_field(kstudio, tmp_path):
    (tmp_path / "bad.yml").write_text(
        "command: python x.py\ncode: missing-folder\nservices: {a: {type: ssh}}\n"
        "resources: {instance_type: nope}\n"
    )
    for command in ("validate", "create"):
        result = kstudio("job", command, "-f", str(tmp_path / "bad.yml"))
        assert result.returncode == 2
        errors = result.stderr.splitlines()
        assert any(e.startswith("ERROR: code: ") and "does not exist" in e for e in errors)
        assert any(e.startswith("ERROR: services: not supported") for e in errors)
        assert any(e.startswith("ERROR: resources.instance_type: ") for e in errors)
    assert json.loads(kstudio("job", "list", "-o", "json", check=True).stdout) == []


def test_cancel_from_the_cli(kstudio, tmp_path):
    (tmp_path / "job.yml").write_text("command: sleep 100\nname: sleepy\n")
    kstudio("job", "create", "-f", str(tmp_path / "job.yml"), check=True)
    kstudio("job", "cancel", "sleepy", check=True)
    result = kstudio("job", "stream", "sleepy")
    assert result.returncode == 1
    assert "ended: Canceled" in result.stderr


def test_compute_and_instance_type_lists(kstudio):
    computes = json.loads(kstudio("compute", "list", "-o", "json", check=True).stdout)
    assert [c["name"] for c in computes] == ["local"]
    types = json.loads(kstudio("instance-type", "list", "-o", "json", check=True).stdout)
    assert {"defaultinstancetype", "cpu-small", "cpu-large"} <= {t["name"] for t in types}
    table = kstudio("instance-type", "list", check=True).stdout
    assert "defaultinstancetype" in table and "memory=2Gi" in table


def test_workspace_list_and_members(kstudio):
    workspaces = json.loads(kstudio("workspace", "list", "-o", "json", check=True).stdout)
    assert [(w["name"], w["default_compute"]) for w in workspaces] == [("demo", "local")]
    table = kstudio("workspace", "members", check=True).stdout
    assert "olivia" in table and "owner" in table and "sam" not in table


def test_clear_errors_for_wrong_name_token_and_server(kstudio):
    missing = kstudio("job", "show", "no-such-job")
    assert missing.returncode == 1 and missing.stderr.startswith("ERROR: ")
    assert "Traceback" not in missing.stderr
    result = kstudio("job", "list", KSTUDIO_TOKEN="kst_wrong")
    assert result.returncode == 1 and "authentication failed" in result.stderr
    result = kstudio("job", "list", KSTUDIO_URL="http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach the studio" in result.stderr


def test_workspace_flag_after_the_command(kstudio):
    assert kstudio("job", "list", "-w", "demo", check=True).returncode == 0
    other = kstudio("job", "list", "-w", "elsewhere")
    assert other.returncode == 1
    assert other.stderr.strip() == "ERROR: No such workspace."


def test_the_shipped_example_trains_and_downloads(kstudio, tmp_path):
    """README's example, from a fresh clone: code, a local input, outputs."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "train" / "job.yml"
    result = kstudio("job", "create", "-f", str(example), "--stream")
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.splitlines()[-1].startswith("y = 2.0")
    name = json.loads(kstudio("job", "list", "-o", "json", check=True).stdout)[0]["name"]
    kstudio("job", "download", name, "--all", "--download-path", str(tmp_path), check=True)
    model = json.loads((tmp_path / "named-outputs" / "model" / "model.json").read_text())
    assert abs(model["a"] - 2) < 0.1
    assert (tmp_path / "artifacts" / "outputs" / "metrics.json").exists()


def test_the_cli_needs_nothing_of_the_server(live_studio, people, tmp_path):
    """`kstudio` is its own package (cli/): with Django and the studio's packages made
    unimportable, it still talks to a studio."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "for name in ('django', 'rest_framework', 'channels', 'studio', 'compute', 'jobs'):\n"
        "    sys.modules[name] = None  # any import of them fails\n"
        "from kstudio_cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), "workspace", "list", "-o", "json"],
        env=dict(
            os.environ,
            KSTUDIO_URL=live_studio.url,
            KSTUDIO_TOKEN=token_for(people.contributor),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [w["name"] for w in json.loads(result.stdout)] == ["demo"]


def test_the_examples_on_registered_assets_run_and_register_their_output(kstudio, tmp_path):
    """examples/data, examples/environment and examples/train/job-with-assets.yml, as the
    README has a user run them."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    kstudio("data", "create", "-f", str(examples / "data" / "points.yml"), check=True)
    kstudio("environment", "create", "-f", str(examples / "environment" / "env.yml"), check=True)
    job = examples / "train" / "job-with-assets.yml"
    result = kstudio("job", "create", "-f", str(job), "--stream")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1].startswith("y = ")
    assert "environment: train-env:1 is ready" in result.stderr
    shown = json.loads(kstudio("data", "show", "line-model@latest", "-o", "json",
                               check=True).stdout)  # fmt: skip
    assert (shown["version"], shown["file_count"]) == ("1", 1)
    name = json.loads(kstudio("job", "list", "-o", "json", check=True).stdout)[0]["name"]
    kstudio("job", "download", name, "--output-name", "model", "-p", str(tmp_path), check=True)
    model = json.loads((tmp_path / "named-outputs" / "model" / "model.json").read_text())
    assert set(model) == {"a", "b"}


@needs_compat
def test_azures_output_example_delivers_to_workspaceblobstore(kstudio, tmp_path):
    result = kstudio("job", "create", "-f", str(BASICS / "hello-world-output-data.yml"),
                     "--stream")  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = json.loads(kstudio("job", "list", "-o", "json", check=True).stdout)[0]
    detail = json.loads(kstudio("job", "show", shown["name"], "-o", "json", check=True).stdout)
    assert detail["data_outputs"]["hello_output"]["uri"] == (
        f"azureml://datastores/workspaceblobstore/paths/azureml/{shown['name']}/hello_output"
    )
    kstudio("job", "download", shown["name"], "--all", "-p", str(tmp_path), check=True)
    written = tmp_path / "named-outputs" / "hello_output" / "helloworld.txt"
    assert written.read_text() == "hello world\n"


def test_workspace_show_gives_the_tracking_uri(kstudio, live_studio):
    shown = json.loads(kstudio("workspace", "show", "-o", "json", check=True).stdout)
    assert shown["name"] == "demo"
    assert shown["tracking_uri"] == f"{live_studio.url}/workspaces/demo/mlflow"
