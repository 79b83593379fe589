"""The model registry: Azure-style models (API, CLI, pages) and MLflow's registry routes,
driven by the stock `mlflow` client with a real scikit-learn model."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest

from registry.models import Model, RegisteredModel
from tests.test_tracking import mlflow_script
from tracking.models import LoggedModel, Run

pytestmark = pytest.mark.django_db(transaction=True)


def test_autolog_of_a_scikit_learn_fit_registers_a_model_the_client_loads_back(live_studio, people):
    """`mlflow.autolog()` over a tiny fit logs params, metrics, the dataset and the model
    (an MLflow 3 logged model); `register_model` on runs:/ makes version 1, and
    `models:/iris/1` loads back and predicts, all through the studio."""
    seen = mlflow_script(live_studio, people.contributor, """
        import json, mlflow, numpy as np
        from mlflow import MlflowClient
        from sklearn.linear_model import LogisticRegression
        X = np.array([[0.0, 0.1], [0.2, 0.0], [1.0, 0.9], [0.9, 1.1], [0.1, 0.3], [1.2, 0.8]])
        y = np.array([0, 0, 1, 1, 0, 1])
        mlflow.set_experiment("autolog")
        mlflow.sklearn.autolog(log_input_examples=False)
        with mlflow.start_run() as run:
            LogisticRegression(C=2.0).fit(X, y)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "iris")
        client = MlflowClient()
        got = client.get_run(run.info.run_id)
        loaded = mlflow.pyfunc.load_model("models:/iris/1")
        again = mlflow.register_model(f"runs:/{run.info.run_id}/model", "iris")
        found = client.search_model_versions("name = 'iris'")
        print(json.dumps({
            "run_id": run.info.run_id,
            "params": got.data.params,
            "metrics": sorted(got.data.metrics),
            "datasets": len(got.inputs.dataset_inputs),
            "version": version.version,
            "again": again.version,
            "prediction": [int(p) for p in loaded.predict(np.array([[0.0, 0.0], [1.0, 1.0]]))],
            "found": sorted(v.version for v in found),
            "latest": [v.version for v in client.get_registered_model("iris").latest_versions],
        }))
    """)  # fmt: skip
    assert seen["params"]["C"] == "2.0"
    assert "training_score" in seen["metrics"]
    assert seen["datasets"] >= 1
    assert (seen["version"], seen["again"], seen["found"]) == ("1", "2", ["1", "2"])
    assert seen["latest"] == ["2"]
    assert seen["prediction"] == [0, 1]
    # What the studio kept: an MLflow model, traced to its run, its files in a datastore.
    model = Model.objects.get(name="iris", version="1")
    assert model.type == "mlflow_model" and "sklearn" in model.flavors
    assert model.run_id == seen["run_id"] and model.job is None
    assert model.path.startswith("azureml://datastores/workspaceblobstore/paths/")
    assert LoggedModel.objects.get(run__run_id=seen["run_id"]).status == "LOGGED_MODEL_READY"
    assert RegisteredModel.objects.filter(name="iris").count() == 1
    assert Run.objects.get(run_id=seen["run_id"]).outputs["model_outputs"]


TRAIN = b"""
import os, pickle, mlflow
from sklearn.linear_model import LogisticRegression
X, y = [[0.0, 0.0], [1.0, 1.0], [0.0, 0.9], [1.0, 0.1]], [0, 1, 0, 1]
model = LogisticRegression().fit(X, y)
os.makedirs("outputs/model", exist_ok=True)
with open("outputs/model/model.pkl", "wb") as f:
    pickle.dump(model, f)
with open("outputs/model/README.md", "w") as f:
    f.write("a tiny classifier")
mlflow.sklearn.log_model(model, name="clf", registered_model_name="from-job")
print("trained")
"""


def _train(live_studio, workspace, people, settings):
    import sys

    from jobs import services as job_services
    from tests.conftest import code_archive, wait_until

    settings.STUDIO_PUBLIC_URL = live_studio.url
    # The studio's own interpreter, which has mlflow and sklearn (a real user's job gets
    # them from its environment); it sits in root's home, so the job runs as the studio.
    settings.STUDIO_JOB_UID_BASE = 0
    text = f"command: {sys.executable} train.py\ncode: src\nexperiment_name: training\n"
    code = job_services.Upload(code_archive({"train.py": TRAIN}), "code.tar.gz")
    job = job_services.submit_yaml(workspace, people.contributor, text, {"code": code})

    def ended():
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, 120, "the training job to end")
    lines = list(job.log_lines.order_by("seq").values_list("line", flat=True))
    assert job.status == "Completed", (job.failure_reason, "\n".join(lines[-12:]))
    return job


def test_a_model_registered_from_a_job_output_is_found_downloaded_and_traced_back(
    live_studio, workspace, people, settings, kstudio, tmp_path, client
):
    job = _train(live_studio, workspace, people, settings)
    # The job registered its own model with its own token: traced back to the job.
    from_job = Model.objects.get(name="from-job")
    assert (from_job.job, from_job.type, from_job.version) == (job, "mlflow_model", "1")
    # A user registers the job's ./outputs/model folder, by Azure's path form.
    made = kstudio(
        "model", "create", "--name", "clf", "--path",
        f"azureml://jobs/{job.name}/outputs/artifacts/paths/model", "-o", "json", check=True,
    )  # fmt: skip
    shown = json.loads(made.stdout)
    assert (shown["version"], shown["job"], shown["file_count"]) == ("1", job.name, 2)
    found = json.loads(kstudio("model", "show", "clf@1", "-o", "json", check=True).stdout)
    assert found["registered_from"].startswith(f"azureml://jobs/{job.name}/")
    assert found["run_id"] == Run.objects.get(experiment__name="training").run_id
    listed = kstudio("model", "list", check=True).stdout
    assert "clf" in listed and "from-job" in listed
    kstudio("model", "download", "clf", "-p", str(tmp_path / "dl"), check=True)
    got = tmp_path / "dl" / "clf" / "model"
    assert (got / "README.md").read_text() == "a tiny classifier"
    with open(got / "model.pkl", "rb") as f:
        assert pickle.load(f).predict([[1.0, 1.0]]).tolist() == [1]
    # The pages: the version with its files and the job that made it.
    client.force_login(people.reader)
    page = client.get("/workspaces/demo/models/clf/1/")
    assert page.status_code == 200
    assert f'href="/workspaces/demo/jobs/{job.name}/"' in page.content.decode()
    assert "model.pkl" in page.content.decode() and "README.md" in page.content.decode()
    listing = client.get("/workspaces/demo/models/").content.decode()
    assert "from-job" in listing and "clf" in listing
    zipped = client.get("/workspaces/demo/models/clf/1/download/")
    names = zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content))).namelist()
    assert sorted(names) == ["model/README.md", "model/model.pkl"]
    # The same files by MLflow's runs:/ form, and job pages link registering.
    again = kstudio("model", "create", "--name", "clf", "--path",
                    f"runs:/{found['run_id']}/outputs/model", "-o", "json", check=True)  # fmt: skip
    assert json.loads(again.stdout)["version"] == "2"
    client.force_login(people.contributor)
    job_page = client.get(f"/workspaces/demo/jobs/{job.name}/").content.decode()
    assert f"?path=azureml://jobs/{job.name}/outputs/artifacts" in job_page


def test_local_files_register_versions_that_never_change_and_bad_input_is_named(
    kstudio, api, people, tmp_path
):
    folder = tmp_path / "mlflow-model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    (folder / "model.pkl").write_bytes(b"weights")
    (tmp_path / "model.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/model.schema.json\n"
        "name: local-mlflow-example\npath: mlflow-model\ntype: mlflow_model\n"
        "description: Model created from local MLflow model directory.\n"
    )
    (tmp_path / "file.yml").write_text("name: local-file-example\npath: mlflow-model/model.pkl\n")
    first = json.loads(kstudio("model", "create", "-f", str(tmp_path / "model.yml"), "-o", "json",
                               check=True).stdout)  # fmt: skip
    second = json.loads(kstudio("model", "create", "-f", str(tmp_path / "model.yml"), "-o", "json",
                                check=True).stdout)  # fmt: skip
    assert (first["version"], second["version"], first["file_count"]) == ("1", "2", 2)
    assert first["flavors"] == ["python_function"] and first["job"] is None
    single = json.loads(kstudio("model", "create", "-f", str(tmp_path / "file.yml"), "-o", "json",
                                check=True).stdout)  # fmt: skip
    assert (single["file_count"], single["size"]) == (1, len(b"weights"))
    contributor = api(people.contributor)
    files = contributor.get("/api/v1/workspaces/demo/models/local-file-example/versions/1/files/")
    assert files.json() == [{"path": "model.pkl", "size": 7}]
    one = contributor.get(
        "/api/v1/workspaces/demo/models/local-file-example/versions/latest/download/?path=model.pkl"
    )
    assert b"".join(one.streaming_content) == b"weights"
    # A version never changes.
    again = kstudio("model", "create", "-f", str(tmp_path / "model.yml"), "--version", "1")
    assert again.returncode != 0 and "already exists" in again.stderr
    # Bad input, by field, and nothing kept.
    before = Model.objects.count()
    (folder / "MLmodel").unlink()
    no_mlmodel = kstudio("model", "create", "-f", str(tmp_path / "model.yml"))
    assert no_mlmodel.returncode == 2 and "path: " in no_mlmodel.stderr
    assert "has no MLmodel file" in no_mlmodel.stderr
    cases = {
        "name: bad name\npath: azureml://jobs/nope/outputs/x\n": ("name", "is not a name"),
        "name: m\npath: azureml://jobs/nope/outputs/x\n": ("path", "no job named 'nope'"),
        "name: m\npath: runs:/notarun/model\n": ("path", "use runs:/<run id>/<path>"),
        "name: m\npath: runs:/" + "0" * 32 + "/model\n": ("path", "no MLflow run"),
        "name: m\npath: azureml://registries/azureml/models/x/versions/1\n": (
            "path", "registry references",
        ),
        "name: m\npath: https://example.com/model.pkl\n": ("path", "kept in a datastore"),
        "name: m\npath: azureml://datastores/workspaceblobstore/paths/nothing\n": (
            "path", "no such file or folder",
        ),
        "name: m\npath: azureml://datastores/workspaceblobstore/paths/x\nflavor: y\n": (
            "flavor", "",
        ),
        "name: m\ntype: onnx\npath: azureml://datastores/workspaceblobstore/paths/x\n": (
            "type", "custom_model",
        ),
    }  # fmt: skip
    for text, (field, expected) in cases.items():
        refused = contributor.post("/api/v1/workspaces/demo/models/", {"yaml": text},
                                   format="json")  # fmt: skip
        assert refused.status_code == 400, text
        errors = {e["field"]: e["message"] for e in refused.json()["errors"]}
        assert field in errors and expected in errors[field], (text, errors)
    assert Model.objects.count() == before
    # Readers read; only contributors register; another workspace sees nothing.
    assert api(people.reader).get("/api/v1/workspaces/demo/models/").status_code == 200
    denied = api(people.reader).post("/api/v1/workspaces/demo/models/", {"yaml": "name: m\n"
                                     "path: azureml://datastores/workspaceblobstore/paths/x\n"},
                                     format="json")  # fmt: skip
    assert denied.status_code == 403
    stranger = api(people.stranger).get("/api/v1/workspaces/demo/models/local-file-example/")
    assert stranger.status_code == 404


def test_the_mlflow_registry_api_searches_aliases_stages_and_deletes(live_studio, people):
    seen = mlflow_script(live_studio, people.contributor, """
        import json, mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        client = MlflowClient()
        mlflow.set_experiment("fit-alpha")
        client.create_experiment("other", tags={"team": "blue"})
        with mlflow.start_run() as run:
            mlflow.log_text("weights", "model/weights.txt")
        for name in ("alpha", "beta"):
            client.create_registered_model(name, tags={"team": "blue"}, description="d")
            for _ in range(2):
                client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                            run_id=run.info.run_id)
        client.set_registered_model_alias("alpha", "champion", "1")
        client.transition_model_version_stage("alpha", "2", "Production")
        client.set_model_version_tag("alpha", "2", "checked", "yes")
        client.delete_model_version("beta", "1")
        def code_of(call):
            try:
                call()
            except MlflowException as exc:
                return exc.error_code
            return "ok"
        print(json.dumps({
            "found": [m.name for m in client.search_registered_models("name LIKE 'al%'")],
            "tagged": [m.name for m in client.search_registered_models("tags.team = 'blue'",
                                                                       order_by=["name DESC"])],
            "champion": client.get_model_version_by_alias("alpha", "champion").version,
            "production": [v.version for v in client.get_latest_versions("alpha", ["Production"])],
            "tag": client.get_model_version("alpha", "2").tags,
            "beta": sorted(v.version for v in client.search_model_versions("name = 'beta'")),
            "rename": code_of(lambda: client.rename_registered_model("alpha", "gamma")),
            "missing": code_of(lambda: client.get_model_version("alpha", "9")),
            "experiments": [e.name for e in client.search_experiments(
                filter_string="name LIKE 'fit%'")],
            "by_tag": [e.name for e in client.search_experiments(
                filter_string="tags.team = 'blue'", order_by=["name ASC"])],
        }))
    """)  # fmt: skip
    assert seen["found"] == ["alpha"]
    assert seen["tagged"] == ["beta", "alpha"]
    assert (seen["champion"], seen["production"]) == ("1", ["2"])
    assert seen["tag"] == {"checked": "yes"}
    assert seen["beta"] == ["2"]
    assert (seen["rename"], seen["missing"]) == (
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
    )
    assert seen["experiments"] == ["fit-alpha"] and seen["by_tag"] == ["other"]
    assert Model.objects.get(name="alpha", version="2").stage == "Production"
    assert set(Model.objects.filter(name="beta").values_list("version", flat=True)) == {"2"}


def test_a_jobs_token_registers_only_its_own_runs_files(client, people, workspace):
    """The check read `model_id` (the job's own logged model) while the registration read
    `source` (another run's files): both now read the same one."""
    from jobs import services as job_services
    from jobs.tokens import token_for as job_token
    from tracking import files as tracking_files
    from tracking import services as tracking

    job = job_services.submit_yaml(workspace, people.contributor, "command: echo\n")
    own = tracking.start_job_run(workspace, "Default", job.run_id, job.name, "carl", {})
    mine = LoggedModel.objects.create(experiment=own.experiment, run=own, name="m",
                                      created_at=1, updated_at=1)  # fmt: skip
    tracking_files.logged_model_tree(workspace, mine.model_id).save("model.pkl", io.BytesIO(b"x"))
    other = Run.objects.create(experiment=own.experiment)
    tracking_files.run_tree(other).save("a.txt", io.BytesIO(b"someone else's"))
    url = "/workspaces/demo/mlflow/api/2.0/mlflow/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {job_token(job)}", "content_type": "application/json"}
    assert client.post(url + "registered-models/create", {"name": "clf"}, **auth).status_code == 200

    def register(source: str, **more: str):
        body = {"name": "clf", "source": source, "run_id": own.run_id, **more}
        return client.post(url + "model-versions/create", body, **auth)

    crossed = register(f"runs:/{other.run_id}/a.txt", model_id=mine.model_id)
    assert crossed.status_code == 403, crossed.content
    assert crossed.json()["error_code"] == "PERMISSION_DENIED"
    assert register(f"runs:/{other.run_id}/a.txt").status_code == 403
    assert not Model.objects.exists()
    made = register(f"models:/{mine.model_id}", model_id=mine.model_id)
    assert made.status_code == 200, made.json()
    assert Model.objects.get().run_id == own.run_id


def test_an_mlmodel_alias_bomb_is_refused_small_and_stores_nothing(kstudio, tmp_path):
    """494 bytes of aliases stored a 135 MB flavors row, and every model listing of the
    workspace then took 12 s: an MLmodel is read with the documents' bounded loader."""
    bomb = "flavors:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    assert len(bomb) < 500
    folder = tmp_path / "bomb"
    folder.mkdir()
    (folder / "MLmodel").write_text(bomb)
    (tmp_path / "model.yml").write_text("name: bomb\npath: bomb\ntype: mlflow_model\n")
    refused = kstudio("model", "create", "-f", str(tmp_path / "model.yml"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ERROR: path: its MLmodel file cannot be read: expands to more than 100,000" in (
        refused.stdout + refused.stderr
    )
    assert not Model.objects.exists() and not RegisteredModel.objects.exists()
