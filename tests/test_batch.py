"""Batch endpoints: the driver on its own (mini-batches, workers, retries, timeouts,
error_threshold), under Python 3.8 and the studio's; the documents' rules; and a batch
endpoint scoring a folder of files into one output file end to end, from the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from endpoints import batch_spec
from endpoints.models import BatchDeployment, BatchEndpoint
from registry.models import Model
from studio.documents import DocumentError
from tests.conftest import token_for, wait_until
from tests.test_kubernetes import finished, lines_of
from tests.test_launcher import INTERPRETERS

DRIVER = Path(__file__).parent.parent / "endpoints" / "batch_driver.py"

# Scores a CSV of numbers: a row per file, its name and its sum. A file named bad*.csv
# always fails; flaky*.csv fails once (a marker file remembers), then succeeds;
# slow*.csv sleeps past the timeout once.
SCRIPT = """
import os, time

def init():
    global started
    started = True
    print("init in", os.getpid())

def marker(path):
    return os.path.join(os.environ["MARKERS"], os.path.basename(path))

def run(mini_batch):
    rows = []
    for path in mini_batch:
        name = os.path.basename(path)
        first = not os.path.exists(marker(path))
        open(marker(path), "a").close()
        if name.startswith("bad"):
            raise ValueError("cannot score " + name)
        if name.startswith("flaky") and first:
            raise RuntimeError("flaky the first time")
        if name.startswith("slow") and first:
            time.sleep(30)
        with open(path) as f:
            total = sum(float(x) for x in f.read().split(","))
        rows.append(name + " " + str(total))
    return rows
"""


def driver_folder(tmp_path: Path, script: str = SCRIPT, **settings: object) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(DRIVER, code / "_kstudio_batch.py")
    (code / "score.py").write_text(script)
    chosen = {"scoring_script": "score.py", "mini_batch_size": 1, **settings}
    (code / "_kstudio_batch.json").write_text(json.dumps(chosen))
    (tmp_path / "markers").mkdir()
    return code


def drive(python: str, tmp_path: Path, files: dict[str, str], **settings: object):
    code = driver_folder(tmp_path, **settings)
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    output = tmp_path / "out"
    result = subprocess.run(
        [python, str(code / "_kstudio_batch.py"), "--data", str(data), "--output", str(output)],
        env={"PATH": "/usr/bin:/bin", "MARKERS": str(tmp_path / "markers")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, output


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_driver_retries_failed_and_timed_out_mini_batches_and_appends_every_row(
    python, tmp_path
):
    files = {f"ok{i}.csv": f"{i},1" for i in range(5)}
    files.update({"flaky.csv": "10,10", "slow.csv": "5,5", "bad.csv": "1"})
    result, output = drive(
        python,
        tmp_path,
        files,
        max_concurrency_per_instance=2,
        error_threshold=1,
        retry_settings={"max_retries": 2, "timeout": 2},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sorted((output / "predictions.csv").read_text().splitlines())
    expected = sorted(
        [f"ok{i}.csv {i + 1.0}" for i in range(5)] + ["flaky.csv 20.0", "slow.csv 10.0"]
    )
    assert rows == expected
    log = result.stdout
    assert "mini-batch 1 failed (RuntimeError: flaky the first time); retry 1 of 2" in log
    assert "mini-batch 7 failed (timed out after 2 s); retry 1 of 2" in log
    assert "mini-batch 0 failed after 3 attempts: ValueError: cannot score bad.csv" in log
    assert log.strip().splitlines()[-2] == "mini-batches: 7 done, 1 failed, 0 left of 8"
    assert "ValueError: cannot score bad.csv" in result.stderr  # the traceback, in the log
    assert result.stderr.count("init in") >= 2  # each worker's init(), its prints in the log


@pytest.mark.parametrize("python", INTERPRETERS)
def test_more_failed_files_than_the_error_threshold_stops_the_job(python, tmp_path):
    files = {"bad1.csv": "1", "bad2.csv": "2", "ok.csv": "3"}
    result, _output = drive(
        python, tmp_path, files, error_threshold=1, retry_settings={"max_retries": 0}
    )
    assert result.returncode == 4
    assert "ERROR: 2 files failed, more than error_threshold 1; stopping" in result.stdout


def test_an_mlflow_model_scores_csv_files_without_a_scoring_script(tmp_path):
    """Azure's no-code batch deployment: each file is read as a table and the model's
    predictions are rows of the output, the file's name first. (Parquet files take
    pyarrow in the deployment's environment, which the studio's own does not have.)"""
    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression().fit(
        pd.DataFrame({"a": [0.0, 1.0, 0.1, 0.9], "b": [0.0, 1.0, 0.0, 1.0]}), [0, 1, 0, 1]
    )
    mlflow.sklearn.save_model(fitted, str(tmp_path / "model" / "clf"))
    code = driver_folder(tmp_path, scoring_script=None, mini_batch_size=2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "low.csv").write_text("a,b\n0.0,0.0\n0.1,0.1\n")
    (data / "high.csv").write_text("a,b\n1.0,0.9\n")
    result = subprocess.run(
        [sys.executable, str(code / "_kstudio_batch.py"), "--data", str(data),
         "--output", str(tmp_path / "out"), "--model", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sorted((tmp_path / "out" / "predictions.csv").read_text().splitlines())
    assert rows == ["high.csv 1", "low.csv 0", "low.csv 0"]


def test_a_failing_init_fails_the_job_with_its_traceback(tmp_path):
    script = (
        "def init():\n    raise OSError('no model here')\n\ndef run(batch):\n    return batch\n"
    )
    code = driver_folder(tmp_path, script=script)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("1")
    result = subprocess.run(
        [sys.executable, str(code / "_kstudio_batch.py"), "--data", str(tmp_path / "data"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    assert "OSError: no model here" in result.stderr
    assert "the scoring script failed to start (init)" in result.stdout


def test_batch_documents_follow_azures_forms_and_refusals():
    legacy = batch_spec.parse_batch_deployment(
        {"name": "legacy", "endpoint_name": "mnist-batch", "model": "azureml:m:1",
         "mini_batch_size": 5, "output_action": "SUMMARY_ONLY", "error_threshold": 3,
         "environment_variables": {"WORKERS": 2}}
    )  # fmt: skip
    assert legacy.settings.mini_batch_size == 5
    assert legacy.settings.output_action == "summary_only"
    assert legacy.settings.environment_variables == {"WORKERS": "2"}
    assert legacy.settings.retry_settings.max_retries == 3  # Azure's defaults
    assert legacy.settings.output_file_name == "predictions.csv"
    cases = {
        "type": {"type": "pipeline", "component": "azureml:c:1"},
        "job_definition": {"job_definition": {}},
        "settings.output_action": {"type": "model", "settings": {"output_action": "append"}},
        "settings.output_file_name": {"settings": {"output_file_name": "../x.csv"}},
        "settings.error_threshold": {"settings": {"error_threshold": -2}},
        "model": {"model": "azureml://registries/azureml/models/m/versions/1"},
        "mini_batch_size": {"type": "model", "mini_batch_size": 3},
    }
    for field, extra in cases.items():
        document = {"name": "d1", "endpoint_name": "e1", "model": "azureml:m:1", **extra}
        with pytest.raises(DocumentError) as caught:
            batch_spec.parse_batch_deployment(document)
        assert any(f.startswith(field) or m.startswith(field) for f, m in caught.value.errors), (
            field,
            caught.value.errors,
        )
    with pytest.raises(DocumentError, match="aad_token"):
        batch_spec.parse_batch_endpoint({"name": "e1", "auth_mode": "key"})


COMPAT = Path(__file__).resolve().parents[2] / "shared" / "compat" / "azureml-examples"


@pytest.mark.skipif(not COMPAT.is_dir(), reason="shared/compat is not beside the checkout")
def test_azures_batch_example_documents_parse():
    folder = COMPAT / "cli/endpoints/batch/deploy-models/mnist-classifier"
    endpoint = batch_spec.parse_batch_endpoint(
        yaml.safe_load((folder / "endpoint.yml").read_text())
    )
    assert endpoint.name == "mnist-batch" and endpoint.auth_mode == "aad_token"
    for kind in ("torch", "keras"):
        data = yaml.safe_load((folder / f"deployment-{kind}/deployment.yml").read_text())
        data["environment"]["conda_file"] = {"dependencies": []}  # the CLI inlines the file
        document = batch_spec.parse_batch_deployment(data)
        assert document.settings.max_concurrency_per_instance == 2
        assert document.compute == "batch-cluster"


# -- end to end ------------------------------------------------------------------------------
SKLEARN_SCRIPT = """
import os, pickle
import pandas as pd

def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.pkl"), "rb") as f:
        model = pickle.load(f)

def run(mini_batch):
    frames = []
    for path in mini_batch:
        if os.path.basename(path).startswith("bad"):
            raise ValueError("unreadable " + os.path.basename(path))
        table = pd.read_csv(path)
        frames.append(pd.DataFrame({"file": os.path.basename(path),
                                    "prediction": model.predict(table[["a", "b"]].values)}))
    return pd.concat(frames)
"""


@pytest.fixture
def batch_tree(tmp_path):
    """Azure's layout: endpoint.yml, deployment.yml, code/, model/, and a data folder."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "batch_driver.py").write_text(SKLEARN_SCRIPT)
    (tmp_path / "model").mkdir()
    model = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], [0, 1, 0, 1])
    (tmp_path / "model" / "model.pkl").write_bytes(pickle.dumps(model))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        (data / f"part-{i}.csv").write_text(f"a,b\n0,0\n1,1\n{i % 2},{i % 2}\n")
    (data / "bad-0.csv").write_text("not,a\ntable")
    (tmp_path / "endpoint.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json\n"
        "name: scorer\ndescription: Scores tables.\n"
    )
    document = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json",
        "name": "sk-dpl", "endpoint_name": "scorer", "type": "model",
        "model": {"name": "batch-sk", "path": "model"},
        "code_configuration": {"code": "code", "scoring_script": "batch_driver.py"},
        "compute": "azureml:local",
        "resources": {"instance_count": 1},
        "settings": {"max_concurrency_per_instance": 2, "mini_batch_size": 2,
                     "output_action": "append_row", "output_file_name": "predictions.csv",
                     "retry_settings": {"max_retries": 1, "timeout": 60},
                     "error_threshold": 2, "logging_level": "info"},
    }  # fmt: skip
    (tmp_path / "deployment.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    return tmp_path


def test_a_batch_endpoint_scores_a_folder_of_files_into_one_output_file(
    kstudio, batch_tree, live_studio, people, settings, client
):
    settings.STUDIO_JOB_PYTHON = sys.executable  # it has scikit-learn and pandas
    settings.STUDIO_JOB_UID_BASE = 0
    settings.STUDIO_PUBLIC_URL = live_studio.url  # the job reports progress to its run
    kstudio("batch-endpoint", "create", "-f", str(batch_tree / "endpoint.yml"), check=True)
    made = kstudio("batch-deployment", "create", "-f", str(batch_tree / "deployment.yml"),
                   "-o", "json", check=True)  # fmt: skip
    shown = json.loads(made.stdout)
    assert shown["is_default"] and shown["model"] == "batch-sk:1"  # the first is the default
    assert Model.objects.filter(name="batch-sk").count() == 1
    started = kstudio("batch-endpoint", "invoke", "-n", "scorer", "--input",
                      str(batch_tree / "data"), "--mini-batch-size", "1",
                      "--set", "output_file_name=scores.csv", "-o", "json", check=True)  # fmt: skip
    name = json.loads(started.stdout)["name"]
    http = httpx.Client(
        base_url=f"{live_studio.url}/api/v1/workspaces/demo/",
        headers={"Authorization": f"Bearer {token_for(people.contributor)}"}, timeout=30,
    )  # fmt: skip

    def ended() -> dict | None:
        job = http.get(f"jobs/{name}/").json()
        return job if job["status"] in ("Completed", "Failed", "Canceled") else None

    job = wait_until(ended, 180, "the batch job to end")
    log = http.get(f"jobs/{name}/logs/").text
    assert job["status"] == "Completed", (job["failure_reason"], log[-3000:])
    assert job["experiment_name"] == "scorer"
    assert job["tags"]["azureml.batch_deployment"] == "sk-dpl"
    # One output file: a row per scored table row, bad-0.csv's failure under the threshold.
    scores = http.get(f"jobs/{name}/outputs/score/scores.csv")
    assert scores.status_code == 200, scores.text
    rows = sorted(scores.text.splitlines())
    assert len(rows) == 15
    assert {r.split()[0] for r in rows} == {f"part-{i}.csv" for i in range(5)}
    assert "part-1.csv 1" in rows and "part-0.csv 0" in rows
    assert "mini-batch 0 failed after 2 attempts: ValueError: unreadable bad-0.csv" in log
    # Progress, as the driver logged it to the job's run, in list-jobs.
    listed = kstudio("batch-endpoint", "list-jobs", "-n", "scorer", "-o", "json", check=True)
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == name
    assert entry["progress"] == {"done": 5, "failed": 1, "left": 0}
    by_deployment = kstudio("batch-deployment", "list-jobs", "-n", "sk-dpl", "-e", "scorer",
                            "-o", "json", check=True)  # fmt: skip
    assert [j["name"] for j in json.loads(by_deployment.stdout)] == [name]
    # The pages: the list, and the endpoint with its deployment, its job and the progress.
    client.force_login(people.reader)
    listed_page = client.get("/workspaces/demo/batch-endpoints/").content.decode()
    assert "scorer" in listed_page and "sk-dpl" in listed_page
    page = client.get("/workspaces/demo/batch-endpoints/scorer/").content.decode()
    assert name in page and "5 done, 1 failed, 0 left" in page and "scores.csv" not in page
    assert "Start a scoring job" not in page  # readers do not invoke


def test_batch_endpoints_refuse_bad_input_by_field_and_keep_nothing_half_made(
    api, people, workspace
):
    client = api(people.contributor)
    base = "/api/v1/workspaces/demo/batch-endpoints/"
    assert client.post(base, {"yaml": "name: scorer\n"}, format="json").status_code == 201
    answer = client.post(base, {"yaml": "name: scorer\n"}, format="json")
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "name"
    text = "name: scorer\ndefaults:\n  deployment_name: nope\n"
    answer = client.put(base + "scorer/", {"yaml": text}, format="json")
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "defaults.deployment_name"
    # A deployment with several problems hears of all of them; nothing is registered.
    document = {"name": "dep-1", "endpoint_name": "scorer", "model": {"path": "model"},
                "compute": "azureml:local", "resources": {"instance_count": 2}}  # fmt: skip
    answer = client.post(base + "scorer/deployments/", {"yaml": yaml.safe_dump(document)},
                         format="json")  # fmt: skip
    assert answer.status_code == 400
    fields = {e["field"] for e in answer.json()["errors"]}
    assert {"resources.instance_count", "code_configuration", "model.path"} <= fields, fields
    assert not BatchDeployment.objects.exists() and not Model.objects.exists()
    # Invoking without a deployment names the field.
    answer = client.post(base + "scorer/invoke/", {"input": "azureml:x:1"}, format="json")
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "deployment_name"
    # Readers may look, not invoke.
    reader = api(people.reader)
    assert reader.get(base).status_code == 200
    assert reader.post(base + "scorer/invoke/", {"input": "x"}, format="json").status_code == 403
    assert BatchEndpoint.objects.count() == 1


def test_a_batch_deployment_on_kubernetes_compute_runs_an_indexed_job_sharing_the_work(
    attached, workspace, people, api, tmp_path
):
    """Two instances: pods of one Indexed Job, instance i taking every i-th mini-batch and
    appending to its own part (no two pods write one file), joined into one output file
    when the job completes; the model comes as the job's input."""
    from endpoints import batch
    from jobs.services import Upload
    from tests.conftest import code_archive

    (tmp_path / "markers").mkdir()
    document = {
        "name": "k8s-dpl", "endpoint_name": "scorer", "type": "model",
        "model": {"name": "tiny", "path": "model"},
        "code_configuration": {"code": "code", "scoring_script": "score.py"},
        "compute": "azureml:k8s", "resources": {"instance_count": 2},
        "settings": {"mini_batch_size": 1,
                     "environment_variables": {"MARKERS": str(tmp_path / "markers")}},
    }  # fmt: skip
    endpoint = batch.save_endpoint(workspace, people.contributor, {"name": "scorer"}, create=True)
    batch.save_deployment(
        workspace, people.contributor, document,
        code=code_archive({"score.py": SCRIPT.encode()}),
        model_upload=code_archive({"weights.txt": b"1"}), model_is_folder=True,
    )  # fmt: skip
    data = code_archive({f"ok{i}.csv": f"{i},{i}".encode() for i in range(4)})
    endpoint.refresh_from_db()  # its default is the deployment just made
    job = batch.invoke(endpoint, people.contributor, input_upload=Upload(data, "data.tar.gz"))
    job = finished(job, 90)
    assert job.status == "Completed", (job.failure_reason, lines_of(job)[-20:])
    assert job.spec["resources"]["instance_count"] == 2
    assert {i["index"] for i in job.instances} == {0, 1}
    assert [f["path"] for f in job.outputs if f["output"] == "score"] == ["predictions.csv"]
    got = api(people.reader).get(
        f"/api/v1/workspaces/demo/jobs/{job.name}/outputs/score/predictions.csv"
    )
    assert got.status_code == 200
    rows = b"".join(got).decode().splitlines()
    # Instance 0's part first (its mini-batches 0 and 2), then instance 1's.
    assert sorted(rows[:2]) == ["ok0.csv 0.0", "ok2.csv 4.0"]
    assert sorted(rows[2:]) == ["ok1.csv 2.0", "ok3.csv 6.0"]
