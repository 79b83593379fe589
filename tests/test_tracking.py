"""The MLflow tracking API, driven by the stock `mlflow` client (mlflow-skinny) in a
process of its own against a live studio, as a notebook or a job would use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from jobs.models import Job
from tests.conftest import code_archive, token_for
from tracking.models import Experiment, Metric, Run

pytestmark = pytest.mark.django_db(transaction=True)


def mlflow_script(live_studio, user, code: str, workspace: str = "demo") -> dict:
    """Run `code` with the MLflow client pointed at the workspace; it prints JSON."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"{live_studio.url}/workspaces/{workspace}/mlflow",
        "MLFLOW_TRACKING_TOKEN": token_for(user),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_mlflow_client_logs_and_reads_back_a_run(live_studio, people):
    seen = mlflow_script(live_studio, people.contributor, """
        import json, mlflow
        from mlflow import MlflowClient
        mlflow.set_experiment("fit-a-line")
        with mlflow.start_run(run_name="first") as run:
            mlflow.log_param("epochs", 5)
            mlflow.log_params({"lr": 0.01, "optimizer": "sgd"})
            mlflow.set_tag("team", "blue")
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metrics({"accuracy": 0.9, "f1": 0.8}, step=4)
        client = MlflowClient()
        got = client.get_run(run.info.run_id)
        history = client.get_metric_history(run.info.run_id, "loss")
        found = mlflow.search_runs(experiment_names=["fit-a-line"], output_format="list")
        print(json.dumps({
            "run_id": run.info.run_id,
            "status": got.info.status,
            "params": got.data.params,
            "tags": {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")},
            "name": got.info.run_name,
            "metrics": got.data.metrics,
            "history": [(m.step, m.value) for m in history],
            "found": [r.info.run_id for r in found],
        }))
    """)  # fmt: skip
    assert seen["status"] == "FINISHED"
    assert seen["params"] == {"epochs": "5", "lr": "0.01", "optimizer": "sgd"}
    assert seen["tags"] == {"team": "blue"}
    assert seen["name"] == "first"
    assert seen["metrics"] == {"loss": 0.2, "accuracy": 0.9, "f1": 0.8}
    assert seen["history"] == [[0, 1.0], [1, 0.5], [2, 1 / 3], [3, 0.25], [4, 0.2]]
    assert seen["found"] == [seen["run_id"]]
    # What the studio kept, read back without the client.
    run = Run.objects.get(run_id=seen["run_id"])
    assert run.experiment.workspace.name == "demo" and run.experiment.name == "fit-a-line"
    assert Metric.objects.filter(run=run, key="loss").count() == 5


def test_mlflow_errors_come_in_mlflows_shape_and_roles_apply(live_studio, people):
    seen = mlflow_script(live_studio, people.contributor, """
        import json, mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        client = MlflowClient()
        answers = {}
        def code_of(call):
            try:
                call()
            except MlflowException as exc:
                return exc.error_code
            return "ok"
        answers["missing run"] = code_of(lambda: client.get_run("0" * 32))
        answers["missing experiment"] = code_of(lambda: client.get_experiment("999999"))
        experiment = client.create_experiment("twice")
        answers["twice"] = code_of(lambda: client.create_experiment("twice"))
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "p", "1")
        answers["param changed"] = code_of(lambda: client.log_param(run.info.run_id, "p", "2"))
        print(json.dumps({"answers": answers, "run_id": run.info.run_id}))
    """)  # fmt: skip
    assert seen["answers"] == {
        "missing run": "RESOURCE_DOES_NOT_EXIST",
        "missing experiment": "RESOURCE_DOES_NOT_EXIST",
        "twice": "RESOURCE_ALREADY_EXISTS",
        "param changed": "INVALID_PARAMETER_VALUE",
    }
    # MLflow's own limits, as its server answers them (the client splits big batches
    # itself, so this is asked over plain HTTP): all or nothing.
    url = f"{live_studio.url}/workspaces/demo/mlflow/api/2.0/mlflow/runs/log-batch"
    headers = {"Authorization": f"Bearer {token_for(people.contributor)}"}
    points = [{"key": "m", "value": 1.0, "timestamp": 0, "step": i} for i in range(1001)]
    too_many = httpx.post(url, json={"run_id": seen["run_id"], "metrics": points},
                          headers=headers)  # fmt: skip
    assert too_many.status_code == 400
    assert too_many.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "at most 1000 metrics" in too_many.json()["message"]
    bad = [{"key": "ok", "value": 1.0, "timestamp": 0}, {"key": "", "value": 2.0, "timestamp": 0}]
    refused = httpx.post(url, json={"run_id": seen["run_id"], "metrics": bad}, headers=headers)
    assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not Metric.objects.filter(run__run_id=seen["run_id"]).exists()  # nothing half-kept
    base = f"{live_studio.url}/workspaces/demo/mlflow/api/2.0/mlflow/"
    for endpoint, body in [
        ("runs/log-batch", {"run_id": seen["run_id"], "metrics": {"key": "m"}}),
        ("runs/log-batch", {"run_id": seen["run_id"], "params": ["p"]}),
        ("runs/create", {"experiment_id": "0", "tags": [{"value": "no key"}]}),
        ("runs/update", {"run_id": seen["run_id"], "end_time": "soon"}),
    ]:
        answer = httpx.post(base + endpoint, json=body, headers=headers)
        assert answer.status_code == 400, (endpoint, answer.text)
        assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert Run.objects.get(run_id=seen["run_id"]).end_time is None
    assert Run.objects.filter(experiment__name="Default").count() == 0

    # A reader reads but does not write; a stranger sees no workspace.
    read = mlflow_script(live_studio, people.reader, f"""
        import json
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        client = MlflowClient()
        run = client.get_run("{seen['run_id']}")
        try:
            client.log_param(run.info.run_id, "q", "1")
            written = "ok"
        except MlflowException as exc:
            written = exc.error_code
        print(json.dumps({{"params": run.data.params, "written": written}}))
    """)  # fmt: skip
    assert read == {"params": {"p": "1"}, "written": "PERMISSION_DENIED"}
    stranger = mlflow_script(live_studio, people.stranger, """
        import json
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        try:
            MlflowClient().search_experiments()
            answer = "ok"
        except MlflowException as exc:
            answer = exc.error_code
        print(json.dumps({"answer": answer}))
    """)  # fmt: skip
    assert stranger == {"answer": "RESOURCE_DOES_NOT_EXIST"}


def test_every_job_is_an_mlflow_run_that_its_token_alone_may_write(
    live_studio, people, workspace, settings
):
    """A job gets MLFLOW_* variables: its code logs to its own run (here over plain HTTP,
    as the client would), may not touch another run, and the run ends with the job."""
    from jobs import services as job_services
    from tests.conftest import wait_until

    settings.STUDIO_PUBLIC_URL = live_studio.url
    other = Run.objects.create(experiment=Experiment.objects.create(workspace=workspace,
                               name="someone-else"))  # fmt: skip
    script = f"""
import json, os, urllib.request, urllib.error
def post(endpoint, body):
    request = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/" + endpoint,
        json.dumps(body).encode(),
        {{"Content-Type": "application/json",
         "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}},
    )
    try:
        return urllib.request.urlopen(request).status
    except urllib.error.HTTPError as exc:
        return json.load(exc)["error_code"]
run = os.environ["MLFLOW_RUN_ID"]
print(os.environ["MLFLOW_EXPERIMENT_NAME"])
print(post("runs/log-metric", {{"run_id": run, "key": "loss", "value": 0.5, "timestamp": 1,
                                "step": 3}}))
print(post("runs/log-parameter", {{"run_id": "{other.run_id}", "key": "x", "value": "1"}}))
print(post("experiments/create", {{"name": "new"}}))
"""
    text = "command: python3 log.py\ncode: src\nexperiment_name: tracked\n"
    code = job_services.Upload(code_archive({"log.py": script.encode()}), "code.tar.gz")
    job = job_services.submit_yaml(workspace, people.contributor, text, {"code": code})

    def ended():
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, 60, "the job to end")
    lines = list(job.log_lines.order_by("seq").values_list("line", flat=True))
    assert job.status == "Completed", (job.failure_reason, lines)
    assert lines == ["tracked", "200", "PERMISSION_DENIED", "PERMISSION_DENIED"]
    run = Run.objects.get(experiment__name="tracked")
    assert run.latest_metrics["loss"]["value"] == 0.5
    assert (run.status, run.tags["kstudio.job"], run.user_id) == ("FINISHED", job.name, "carl")
    assert not other.params and Run.objects.get(pk=other.pk).params == {}
    # Its token dies with the job.
    url = f"{live_studio.url}/workspaces/demo/mlflow/api/2.0/mlflow/runs/get"
    from jobs.tokens import token_for as job_token

    late = httpx.get(url, params={"run_id": run.run_id},
                     headers={"Authorization": f"Bearer {job_token(job)}"})  # fmt: skip
    assert late.json()["error_code"] == "UNAUTHENTICATED"


def test_a_jobs_run_id_is_random_so_its_name_does_not_give_it_away(workspace, people):
    """Run ids were uuid5 of the workspace and the job's name: anyone could compute them."""
    import uuid

    from jobs import services as job_services

    jobs = [job_services.submit_yaml(workspace, people.contributor, "command: echo\n")
            for _ in range(2)]  # fmt: skip
    for job in jobs:
        derived = uuid.uuid5(uuid.NAMESPACE_URL, f"kstudio:job:{workspace.pk}/{job.name}").hex
        assert len(job.run_id) == 32 and int(job.run_id, 16) >= 0
        assert job.run_id != derived
    assert jobs[0].run_id != jobs[1].run_id
    assert Job.objects.get(pk=jobs[0].pk).run_id == jobs[0].run_id  # kept, not made anew


def test_the_mlflow_client_logs_lists_and_downloads_artifacts(live_studio, people, tmp_path):
    seen = mlflow_script(live_studio, people.contributor, f"""
        import json, os, mlflow
        from mlflow import MlflowClient
        folder = {str(tmp_path)!r}
        os.makedirs(os.path.join(folder, "plots", "deep"))
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write("hello")
        with open(os.path.join(folder, "plots", "deep", "p.csv"), "w") as f:
            f.write("1,2")
        with mlflow.start_run() as run:
            mlflow.log_artifact(os.path.join(folder, "notes.txt"))
            mlflow.log_artifacts(os.path.join(folder, "plots"), artifact_path="plots")
            mlflow.log_dict({{"a": 1}}, "config/params.json")
        client = MlflowClient()
        top = [(f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id)]
        deep = [(f.path, f.file_size) for f in client.list_artifacts(run.info.run_id, "plots/deep")]
        got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=folder + "/dl")
        with open(os.path.join(got, "plots", "deep", "p.csv")) as f:
            downloaded = f.read()
        print(json.dumps({{"top": top, "deep": deep, "downloaded": downloaded,
                          "uri": run.info.artifact_uri}}))
    """)  # fmt: skip
    assert seen["top"] == [["config", True], ["notes.txt", False], ["plots", True]]
    assert seen["deep"] == [["plots/deep/p.csv", 3]]
    assert seen["downloaded"] == "1,2"
    assert seen["uri"].startswith("mlflow-artifacts:/")


def test_runs_are_searched_with_mlflows_filters_and_order(live_studio, people):
    seen = mlflow_script(live_studio, people.contributor, """
        import json, mlflow
        from mlflow.exceptions import MlflowException
        mlflow.set_experiment("sweep")
        for name, lr, loss, team in [("a", 0.1, 0.9, "blue"), ("b", 0.01, 0.3, "red"),
                                     ("c", 0.001, 0.5, "blue")]:
            with mlflow.start_run(run_name=name):
                mlflow.log_param("lr", lr)
                mlflow.log_metric("loss", 2.0, step=0)
                mlflow.log_metric("loss", loss, step=1)
                mlflow.set_tag("team name", team)
        def names(filter_string, order_by=None):
            found = mlflow.search_runs(experiment_names=["sweep"], filter_string=filter_string,
                                       order_by=order_by, output_format="list")
            return [r.info.run_name for r in found]
        answers = {
            "loss < 0.6": names("metrics.loss < 0.6", ["attributes.run_name ASC"]),
            "param": names("params.lr = '0.01'"),
            "tag and metric": names("tags.`team name` = 'blue' and metrics.loss >= 0.5",
                                    ["run_name DESC"]),
            "like": names("attributes.run_name LIKE 'b%'"),
            "status": names("attributes.status != 'FINISHED'"),
        }
        try:
            names("metrics.loss ~ 1")
            answers["bad"] = "ok"
        except MlflowException as exc:
            answers["bad"] = exc.error_code
        print(json.dumps(answers))
    """)  # fmt: skip
    assert seen == {
        "loss < 0.6": ["b", "c"],
        "param": ["b"],
        "tag and metric": ["c", "a"],
        "like": ["b"],
        "status": [],
        "bad": "INVALID_PARAMETER_VALUE",
    }


def test_the_experiment_page_lists_runs_with_metric_columns_in_constant_queries(
    client, people, workspace
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tracking import services as tracking

    experiment = tracking.create_experiment(workspace, "sweep")

    def add(count: int) -> None:
        for i in range(count):
            run = tracking.create_run(experiment, f"r{Run.objects.count():03d}")
            points = [{"key": "loss", "value": 1 / (i + 1), "timestamp": 1},
                      {"key": "acc", "value": i / 100, "timestamp": 1}]  # fmt: skip
            tracking.log_batch(run, points, [], [])

    client.force_login(people.reader)
    url = f"/workspaces/demo/experiments/{experiment.pk}/?ordering=-metrics.acc"
    add(3)
    with CaptureQueriesContext(connection) as few:
        page = client.get(url)
    assert page.status_code == 200
    add(60)
    with CaptureQueriesContext(connection) as many:
        page = client.get(url)
    assert len(many.captured_queries) == len(few.captured_queries)
    html = page.content.decode()
    assert ">acc<" in html and ">loss<" in html
    # Sorted by accuracy, highest first: the last run added of the 60 (0.59) leads.
    assert html.index(">0.59<") < html.index(">0.58<")
    listing = client.get("/workspaces/demo/experiments/").content.decode()
    assert "sweep" in listing and "/workspaces/demo/mlflow" in listing
    client.force_login(people.stranger)
    assert client.get(url).status_code == 404


def test_a_jobs_cpu_and_memory_are_logged_to_its_run_without_user_code(
    live_studio, people, workspace, settings
):
    from pathlib import Path

    from jobs import services as job_services
    from tests.conftest import wait_until

    settings.STUDIO_PUBLIC_URL = live_studio.url
    settings.STUDIO_SYSTEM_METRICS_SECONDS = 0.2
    busy = "python3 -c \"import os\nwhile not os.path.exists('go'): pass\""
    job = job_services.submit_yaml(
        workspace, people.contributor, f"command: {json.dumps(busy)}\nexperiment_name: sys\n", {}
    )

    def sampled() -> Run | None:
        run = Run.objects.filter(experiment__name="sys").first()
        latest = run.latest_metrics if run else {}
        return (
            run if latest.get("system/cpu_utilization_percentage", {}).get("step", 0) >= 2 else None
        )

    run = wait_until(sampled, 60, "system metrics of the busy job")
    job.refresh_from_db()
    Path(job.runtime["root"], "wd", "go").touch()
    wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, 60, "the job to end")
    run.refresh_from_db()
    assert run.latest_metrics["system/cpu_utilization_percentage"]["value"] > 20  # busy
    assert run.latest_metrics["system/system_memory_usage_megabytes"]["value"] > 1
    assert Metric.objects.filter(run=run, key="system/cpu_utilization_percentage").count() >= 3


def test_the_compare_view_overlays_a_metric_across_21_jobs_and_downloads_it(
    client, people, workspace
):
    from jobs.services import submit_yaml
    from tracking import services as tracking

    names, run_ids = [], []
    for index in range(21):
        job = submit_yaml(workspace, people.contributor, "command: echo\n", {})
        run_ids.append(job.run_id)
        run = tracking.start_job_run(workspace, "Default", job.run_id,
                                     job.name, "carl", {"kstudio.job": job.name})  # fmt: skip
        points = [{"key": "loss", "value": index + step / 10, "timestamp": step, "step": step}
                  for step in range(3)]  # fmt: skip
        tracking.log_batch(run, points, [], [])
        names.append(job.name)
    client.force_login(people.reader)
    url = "/workspaces/demo/jobs/compare/"
    shown = client.get(url, {"jobs": names, "metric": "loss", "format": "json"}).json()
    assert shown["metric"] == "loss" and len(shown["series"]) == 21
    assert shown["series"][0] == {
        "run_id": run_ids[0], "name": names[0],
        "steps": [0, 1, 2], "values": [0.0, 0.1, 0.2],
    }  # fmt: skip
    csv = client.get(url, {"jobs": names[:2], "format": "csv"}).content.decode().splitlines()
    assert csv == ["job,step,value", f"{names[0]},0,0.0", f"{names[0]},1,0.1",
                   f"{names[0]},2,0.2", f"{names[1]},0,1.0", f"{names[1]},1,1.1",
                   f"{names[1]},2,1.2"]  # fmt: skip
    page = client.get(url, {"jobs": [*names[:3], "nope"]}).content.decode()
    assert "Compare 3 jobs" in page and "Not found in this workspace: nope" in page


def test_nan_and_infinite_metrics_are_kept_and_read_back_as_mlflow_writes_them(live_studio, people):
    """NaN (SQLite has none) and infinities (JSON has neither) round-trip through the
    client, and a run whose latest value is one still sorts and searches."""
    seen = mlflow_script(live_studio, people.contributor, """
        import json, math, mlflow
        from mlflow import MlflowClient
        mlflow.set_experiment("odd-values")
        with mlflow.start_run() as odd:
            mlflow.log_metric("loss", float("nan"), step=0)
            mlflow.log_metric("loss", float("inf"), step=1)
            mlflow.log_metric("gain", float("-inf"), step=0)
        with mlflow.start_run() as plain:
            mlflow.log_metric("loss", 0.5, step=0)
        client = MlflowClient()
        got = client.get_run(odd.info.run_id).data.metrics
        history = [m.value for m in client.get_metric_history(odd.info.run_id, "loss")]
        found = mlflow.search_runs(experiment_names=["odd-values"], output_format="list",
                                   filter_string="metrics.loss < 1")
        print(json.dumps({"latest": [repr(got["loss"]), repr(got["gain"])],
                          "history": [repr(v) for v in history],
                          "found": [r.info.run_id for r in found], "plain": plain.info.run_id}))
    """)  # fmt: skip
    assert seen["latest"] == ["inf", "-inf"]
    assert seen["history"] == ["nan", "inf"]
    assert seen["found"] == [seen["plain"]]
    odd = Run.objects.get(experiment__name="odd-values", latest_metrics__has_key="gain")
    assert Metric.objects.get(run=odd, key="loss", step=0).is_nan


def test_a_metric_with_many_points_is_thinned_by_the_database_for_charts(workspace):
    from tracking import services

    experiment = Experiment.objects.create(workspace=workspace, name="long")
    run = Run.objects.create(experiment=experiment)
    total = services.MAX_CHART_POINTS * 3 + 7
    services.log_batch(run, [{"key": "loss", "value": float(i), "timestamp": i, "step": i}
                             for i in range(1000)], [], [])  # fmt: skip
    Metric.objects.bulk_create(
        Metric(run=run, key="loss", value=float(i), timestamp=i, step=i) for i in range(1000, total)
    )
    rows, count = services.thinned(run, "loss")
    assert count == total
    assert len(rows) <= services.MAX_CHART_POINTS + 1
    steps = [r[0] for r in rows]
    assert steps[0] == 0 and steps[-1] == total - 1 and steps == sorted(steps)
    assert steps[1] - steps[0] == 4  # every 4th point (ceil of 6007 / 2000)


# azureml-examples' hello-mlflow.py (not shipped in shared/compat): MLflow calls as Azure's
# example makes them, with no studio in sight.
HELLO_MLFLOW = b"""
import mlflow, random
mlflow.autolog()
mlflow.log_param("hello_param", "world")
mlflow.log_metric("hello_metric", random.random())
with open("helloworld.txt", "w") as f:
    f.write("hello world")
mlflow.log_artifact("helloworld.txt")
"""


def test_azures_hello_mlflow_job_logs_to_the_studio_untouched(
    live_studio, workspace, people, settings
):
    import sys
    from pathlib import Path

    from jobs import services as job_services
    from tests.conftest import wait_until
    from tracking.files import run_tree

    example = (Path(__file__).resolve().parents[2] / "shared" / "compat" / "azureml-examples"
               / "cli" / "jobs" / "basics" / "hello-mlflow.yml")  # fmt: skip
    if not example.is_file():
        pytest.skip("shared/compat is not beside the checkout")
    settings.STUDIO_PUBLIC_URL = live_studio.url
    # The studio's own interpreter has mlflow (a user's job gets it from its environment,
    # here a curated stand-in); it sits in root's home, so the job runs as the studio.
    settings.STUDIO_JOB_PYTHON = sys.executable
    settings.STUDIO_JOB_UID_BASE = 0
    code = job_services.Upload(code_archive({"hello-mlflow.py": HELLO_MLFLOW}), "code.tar.gz")
    job = job_services.submit_yaml(workspace, people.contributor, example.read_text(),
                                   {"code": code})  # fmt: skip

    def ended():
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, 120, "the job to end")
    lines = list(job.log_lines.order_by("seq").values_list("line", flat=True))
    assert job.status == "Completed", (job.failure_reason, "\n".join(lines[-15:]))
    run = Run.objects.get(run_id=job.run_id)
    assert run.params == {"hello_param": "world"} and run.status == "FINISHED"
    assert 0 <= run.latest_metrics["hello_metric"]["value"] < 1
    assert [p for p, _size in run_tree(run).walk("", 10)] == ["helloworld.txt"]
