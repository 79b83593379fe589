"""A data scientist's journey in real headless Chromium: sign in, submit, watch, done."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from django.db import connections

from compute.backends.local import LocalBackend
from jobs.models import Job

T = TypeVar("T")

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]

# Each line waits for a file the test creates, so the test sees lines arrive while the job
# is still running, without racing a timer.
SLOW_JOB = """command: |
  echo "step 1"
  while [ ! -f go ]; do sleep 0.05; done
  echo "step 2"
display_name: browser-job
"""


def orm(query: Callable[[], T]) -> T:
    """Run a query outside this thread: Playwright's sync API keeps an event loop here."""

    def run() -> T:
        try:
            return query()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


@pytest.fixture
def page(live_studio) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(base_url=live_studio.url)
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        context.close()
        browser.close()


def sign_in(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_submit_watch_logs_live_and_see_completed(people, page):
    from playwright.sync_api import expect

    sign_in(page, "carl", "pw-carl-12345")
    expect(page.locator("h1")).to_contain_text("Jobs")
    page.click("text=Submit job")
    page.select_option("select[name=instance_type]", "cpu-small")
    page.fill("textarea[name=spec]", SLOW_JOB)
    page.click("button[type=submit]")

    expect(page.locator("h1")).to_contain_text("browser-job")
    logs = page.locator("#logs")
    expect(logs).to_contain_text("step 1")
    expect(page.locator("#job-status")).to_have_text("Running")  # live, not reloaded
    assert "step 2" not in logs.inner_text()

    job = orm(lambda: Job.objects.get(display_name="browser-job"))
    assert job.instance_type == "cpu-small"
    Path(job.runtime["root"], "wd", "go").touch()

    expect(logs).to_contain_text("step 2")
    expect(page.locator("#job-status")).to_have_text("Completed")
    expect(page.locator("#log-state")).to_have_text("The job ended: Completed.")
    assert logs.inner_text().splitlines() == ["step 1", "step 2"]

    page.click("header nav >> text=demo")
    row = page.locator(f"#job-row-{job.name}")
    expect(row.locator("[data-status]")).to_have_text("Completed")


def test_form_shows_problems_inline_and_stores_nothing(people, page):
    from playwright.sync_api import expect

    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/jobs/new/")
    page.fill("textarea[name=spec]", "command: echo hi\nservices: {x: {type: ssh}}\nbogus: 1\n")
    page.click("button[type=submit]")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("services")
    expect(alert).to_contain_text("bogus")
    expect(alert).to_contain_text("unknown field")
    assert orm(Job.objects.count) == 0


def test_reader_cannot_submit_and_stranger_sees_nothing(people, page):
    sign_in(page, "rita", "pw-rita-12345")
    assert page.locator("text=Submit job").count() == 0
    assert page.goto("/workspaces/demo/jobs/new/").status == 403
    page.click("text=Sign out")
    page.wait_for_url("**/login/")
    sign_in(page, "sam", "pw-sam-12345")
    assert page.goto("/workspaces/demo/jobs/").status == 404


def test_form_asks_for_local_input_files_and_the_job_reads_them(people, page, tmp_path):
    from playwright.sync_api import expect

    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/jobs/new/")
    page.fill(
        "textarea[name=spec]",
        "command: cat ${{inputs.table}}\ninputs:\n  table: {type: uri_file, path: ./data.csv}\n",
    )
    field = page.locator("input[name='inputs.table']")
    expect(field).to_be_visible()  # asked for as soon as the YAML names a local file
    field.set_input_files(str(data))
    page.click("button[type=submit]")
    expect(page.locator("#job-status")).to_have_text("Completed")
    expect(page.locator("#logs")).to_contain_text("1,2")


def test_register_data_in_the_browser_and_a_job_reads_it_at_latest(people, page, tmp_path):
    from playwright.sync_api import expect

    first, second = tmp_path / "v1" / "rows.csv", tmp_path / "v2" / "rows.csv"
    for path, text in ((first, "a,b\n"), (second, "c,d\n")):
        path.parent.mkdir()
        path.write_text(text)
    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/jobs/")
    page.get_by_role("link", name="Data", exact=True).click()
    page.get_by_role("link", name="Register data").click()
    for upload in (first, second):
        page.goto("/workspaces/demo/data/new/")
        page.fill("input[name=name]", "rows")
        page.select_option("select[name=type]", "uri_file")
        page.set_input_files("input[name=upload]", str(upload))
        page.click("button[type=submit]")
    expect(page.locator("#version-2")).to_contain_text("azureml:rows@latest")
    # Neither a path nor files: said on the form, nothing stored.
    page.goto("/workspaces/demo/data/new/")
    page.fill("input[name=name]", "empty")
    page.click("button[type=submit]")
    expect(page.locator("form.stack")).to_contain_text("Give a path or upload files")

    page.goto("/workspaces/demo/jobs/new/")
    page.fill(
        "textarea[name=spec]",
        "command: cat ${{inputs.rows}} && tr a-z A-Z < ${{inputs.rows}} > ${{outputs.out}}/up.csv\n"
        "inputs:\n  rows: {type: uri_file, path: azureml:rows@latest}\n"
        "outputs:\n  out: {type: uri_folder, name: upper}\n",
    )
    page.click("button[type=submit]")
    expect(page.locator("#job-status")).to_have_text("Completed")
    expect(page.locator("#logs")).to_contain_text("c,d")
    # Its output, registered as a data asset, downloads from the job page.
    expect(page.get_by_role("link", name="upper:1")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="up.csv").click()
    assert Path(download.value.path()).read_text() == "C,D\n"
    overview = page.locator("dl", has_text="Data read")
    expect(overview).to_contain_text("rows:2")
    overview.locator("a", has_text="rows:2").click()
    expect(page.locator("#version-2")).to_contain_text("Read by")
    job = orm(lambda: Job.objects.get(workspace__name="demo"))
    expect(page.locator("#version-2")).to_contain_text(job.name)
    expect(page.locator("#version-1")).to_contain_text("no jobs yet")


def test_job_list_stays_whole_while_jobs_change_state(people, workspace, page):
    """A row refreshed by a status event replaces that row only, never the table."""
    from playwright.sync_api import expect

    from jobs.services import submit_yaml

    other = orm(lambda: submit_yaml(workspace, people.contributor, "command: echo quick\n"))
    slow = orm(lambda: submit_yaml(workspace, people.contributor, SLOW_JOB))
    sign_in(page, "rita", "pw-rita-12345")
    page.goto("/workspaces/demo/jobs/")
    slow_row = page.locator(f"#job-row-{slow.name}")
    expect(slow_row.locator("[data-status]")).to_have_text("Running")
    expect(page.locator(f"#job-row-{other.name} [data-status]")).to_have_text("Completed")
    job = orm(lambda: Job.objects.get(pk=slow.pk))
    Path(job.runtime["root"], "wd", "go").touch()
    expect(slow_row.locator("[data-status]")).to_have_text("Completed")
    expect(page.locator("table.jobs thead th").nth(1)).to_have_text("Name")  # after Compare
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)
    expect(page.locator("#jobs > table, #jobs > .scroll > table")).to_have_count(1)


def test_log_pane_finds_shows_times_trims_and_downloads(people, workspace, page):
    from playwright.sync_api import expect

    from jobs.services import submit_yaml

    text = "command: for i in $(seq 1 5200); do echo line-$i; done; echo needle-here\n"
    job = orm(lambda: submit_yaml(workspace, people.contributor, text))
    sign_in(page, "rita", "pw-rita-12345")
    page.goto(f"/workspaces/demo/jobs/{job.name}/")
    logs = page.get_by_role("log")
    expect(page.locator("#log-state")).to_have_text("The job ended: Completed.", timeout=60_000)
    expect(logs).to_contain_text("needle-here")
    # Only the newest lines stay on the page, with a note that says so.
    kept = page.locator("#logs span.line").count()
    assert 5000 <= kept <= 5050
    expect(page.locator("#logs .trimmed")).to_contain_text("earlier lines are not shown")
    page.fill("#log-search", "needle")
    expect(page.locator("#logs span.line:not(.hidden)")).to_have_count(1)
    page.fill("#log-search", "")
    expect(page.locator("#logs span.line .ts").first).to_be_hidden()
    page.check("#log-timestamps")
    expect(page.locator("#logs span.line .ts").first).to_be_visible()
    with page.expect_download() as download:
        page.click("text=Download the whole log")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 5201 and lines[0] == "line-1" and lines[-1] == "needle-here"


@pytest.mark.parametrize("where", ["jobs/", "jobs/new/", "job", "data/", "environments/"])
def test_pages_fit_a_phone_held_upright(people, workspace, page, where):
    from jobs.services import submit_yaml

    job = orm(lambda: submit_yaml(workspace, people.contributor, "command: echo hi\n"))
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, "carl", "pw-carl-12345")
    page.goto(
        f"/workspaces/demo/jobs/{job.name}/" if where == "job" else f"/workspaces/demo/{where}"
    )
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px wider than the screen: {page.evaluate(WIDER)}"


# What sticks out past the screen's right edge (a failure says which elements, and what).
WIDER = """Array.from(document.querySelectorAll("body *"))
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map(e => `${e.tagName}#${e.id}.${e.className} to ${e.getBoundingClientRect().right}px:
    ${(e.textContent || "").trim().slice(0, 80)}`).slice(-6)"""


A11Y_PAGES = [
    ("carl", "/workspaces/demo/jobs/"),
    ("carl", "/workspaces/demo/jobs/new/"),
    ("carl", "job"),
    ("carl", "/workspaces/demo/members/"),
    ("carl", "/workspaces/demo/data/"),
    ("carl", "/workspaces/demo/data/new/"),
    ("carl", "/workspaces/demo/environments/"),
    ("carl", "/workspaces/demo/experiments/"),
    ("carl", "/workspaces/demo/jobs/compare/"),
    ("carl", "/workspaces/demo/models/"),
    ("carl", "/workspaces/demo/models/new/"),
    ("carl", "model"),
    ("carl", "/workspaces/demo/endpoints/"),
    ("carl", "endpoint"),
    ("carl", "deployment"),
    ("carl", "/workspaces/demo/batch-endpoints/"),
    ("carl", "batch endpoint"),
    ("ivan", "/workspaces/demo/data/datastores/"),
    ("carl", "/profile/"),
    ("ivan", "/console/"),
    (None, "/login/"),
]


@pytest.mark.parametrize(("who", "where"), A11Y_PAGES)
def test_pages_pass_axe_wcag_aa(people, workspace, page, who, where):
    """axe-core (bundled with axe-playwright-python) finds no WCAG 2 A/AA violation:
    contrast, labels, roles, landmarks."""
    from axe_playwright_python.sync_playwright import Axe

    from jobs.services import submit_yaml

    job = orm(lambda: submit_yaml(workspace, people.contributor, "command: echo hi\n"))
    if where == "model":
        import io

        from registry.services import create_model

        weights = io.BytesIO(b"weights")
        orm(lambda: create_model(workspace, people.contributor,
                                 {"name": "clf", "path": "model.pkl"}, weights))  # fmt: skip
        where = "/workspaces/demo/models/clf/1/"
    if where == "endpoint":
        from endpoints.services import save_endpoint

        orm(lambda: save_endpoint(workspace, people.contributor, {"name": "my-endpoint"}))
        where = "/workspaces/demo/endpoints/my-endpoint/"
    if where == "deployment":
        from django.utils import timezone

        from endpoints import spec
        from endpoints.models import Deployment, DeploymentLogLine
        from endpoints.services import save_endpoint

        def made() -> None:
            endpoint = save_endpoint(workspace, people.contributor, {"name": "my-endpoint"})
            code = {"code": ".", "scoring_script": "score.py"}
            document = spec.parse_deployment(
                {"name": "blue", "endpoint_name": "my-endpoint", "code_configuration": code}
            )
            blue = Deployment.objects.create(
                endpoint=endpoint, name="blue", type="kubernetes", state="Failed",
                document=document.model_dump(mode="json", by_alias=True, exclude_none=True),
            )  # fmt: skip
            DeploymentLogLine.objects.create(
                deployment=blue, seq=1, ts=timezone.now(), instance="g1-instance-0",
                container="inference-server", line="model server listening on 127.0.0.1:5001",
            )  # fmt: skip

        orm(made)
        where = "/workspaces/demo/endpoints/my-endpoint/blue/"
    if where == "batch endpoint":
        from endpoints import batch

        orm(lambda: batch.save_endpoint(workspace, people.contributor, {"name": "scorer"},
                                        create=True))  # fmt: skip
        where = "/workspaces/demo/batch-endpoints/scorer/"
    if who:
        sign_in(page, who, f"pw-{who}-12345")
    page.goto(f"/workspaces/demo/jobs/{job.name}/" if where == "job" else where)
    page.wait_for_load_state("networkidle")
    if where.endswith("/blue/"):  # the live log drawn (its source and text), then checked
        from playwright.sync_api import expect

        expect(page.locator("#logs span.line .source")).to_have_text(
            "[g1-instance-0 inference-server] "
        )
    results = Axe().run(
        page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}}
    )
    assert results.violations_count == 0, results.generate_report()


class NoRoom(LocalBackend):
    @classmethod
    def capacity(cls):
        return 0


def test_a_change_during_a_rows_refresh_is_not_lost(people, workspace, page, settings):
    """A row is refreshing (its answer held back) when the job's next states are
    announced: the row must still end at the last one, not at what it was fetching."""
    import time as clock

    from playwright.sync_api import expect

    from compute.models import ComputeTarget
    from jobs import services
    from jobs.models import Status

    # A compute with no room: no controller takes the job, this test moves it itself.
    settings.STUDIO_COMPUTE_BACKENDS = {
        **settings.STUDIO_COMPUTE_BACKENDS,
        "idle": "tests.test_browser.NoRoom",
    }
    orm(lambda: ComputeTarget.objects.create(workspace=workspace, name="idle", kind="idle"))
    job = orm(
        lambda: services.submit_yaml(workspace, people.contributor, "command: x\ncompute: idle\n")
    )
    sign_in(page, "rita", "pw-rita-12345")
    page.goto("/workspaces/demo/jobs/")
    row = page.locator(f"#job-row-{job.name} [data-status]")
    expect(row).to_have_text("Queued")
    expect(page.locator("body[data-workspace-live=true]")).to_have_count(1)
    page.wait_for_load_state("networkidle")  # the refresh made on connecting is over
    moves = iter([[Status.PREPARING, Status.RUNNING], [Status.FINALIZING, Status.COMPLETED]])

    def move(statuses):
        for status in statuses:
            orm(lambda status=status: services.transition(Job.objects.get(pk=job.pk), status))

    def held_back(route):
        answer = route.fetch()  # rendered now ...
        next_move = next(moves, None)
        if next_move:
            move(next_move)  # ... the next states are announced meanwhile ...
            clock.sleep(0.3)
        route.fulfill(response=answer)  # ... and the older answer shown after them

    page.route("**/row/", held_back)
    move([Status.PREPARING])  # no wait: the first refresh starts the chain
    expect(row).to_have_text("Completed", timeout=5_000)  # well before the 15 s poll


# Waits for a file on the node (the process kubelet runs pods as this host's processes),
# so the test sees the first line arrive while the pod still runs.
HELLO_ON_K8S = """command: |
  echo "hello world" | tee ${{{{outputs.greeting}}}}/hello.txt
  while [ ! -f {go} ]; do sleep 0.05; done
  echo "step 2"
outputs:
  greeting: {{type: uri_folder}}
display_name: hello-k8s
"""


def test_it_ops_set_up_a_cluster_in_the_console_and_a_job_runs_and_waits_there_saying_why(
    people, page, kube, live_studio, tmp_path
):
    """IT-ops go from a kubeconfig to a compute target in the console alone; a data scientist
    then submits hello-world to it, watches its log live and downloads its output, and
    picks an instance type no node can fit and sees the job Queued with the scheduler's
    reason."""
    import yaml
    from playwright.sync_api import expect

    sign_in(page, "ivan", "pw-ivan-12345")
    page.goto("/console/")
    page.click("text=Register a cluster")
    page.fill("input[name=name]", "lab")
    page.fill("textarea[name=kubeconfig]", yaml.safe_dump(kube.kubeconfig()))
    page.fill("input[name=studio_url]", live_studio.url)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Cluster lab")
    reachable = page.locator("#cluster-reachable")
    expect(reachable).to_contain_text(f"yes, Kubernetes {kube.api.git_version}")

    page.fill("textarea[name=settings]", "enableTraining=true")
    page.click("text=Install or update the extension")
    expect(page.locator("#applied")).to_contain_text("instancetypes.kstudio.io")

    page.fill(
        "textarea[name=document]",
        "apiVersion: kstudio.io/v1alpha1\nkind: InstanceType\nmetadata: {name: gpu-huge}\n"
        "spec:\n  nodeSelector: {pool: gpu}\n  resources:\n"
        "    requests: {cpu: '2', memory: 8Gi}\n"
        "    limits: {cpu: '2', memory: 8Gi, nvidia.com/gpu: 1}\n",
    )
    page.click("text=Apply instance types")
    expect(page.locator("#instance-types")).to_contain_text("gpu-huge")

    page.goto("/console/")
    page.click("text=Attach a cluster")
    page.fill("input[name=name]", "k8s")
    page.select_option("select[name=cluster]", "lab")
    page.fill("input[name=namespace]", "team-a")
    page.check("input[name=create_namespace]")
    # The extension is in, so the studio holds only its token: a new namespace is granted
    # with a cluster admin's kubeconfig, given for this once.
    page.fill("textarea[name=kubeconfig]", yaml.safe_dump(kube.kubeconfig()))
    page.click("button[type=submit]")
    expect(page.get_by_text("k8s attached to demo (team-a).")).to_be_visible()

    page.click("text=Sign out")
    page.wait_for_url("**/login/")
    sign_in(page, "carl", "pw-carl-12345")
    go = tmp_path / "go"
    page.goto("/workspaces/demo/jobs/new/")
    page.select_option("select[name=compute]", "k8s")
    page.select_option("select[name=instance_type]", "defaultinstancetype")
    page.fill("textarea[name=spec]", HELLO_ON_K8S.format(go=go))
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("hello-k8s")
    logs = page.locator("#logs")
    expect(logs).to_contain_text("hello world", timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("Running")  # live, not reloaded
    assert "step 2" not in logs.inner_text()
    go.touch()
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=60_000)
    expect(logs).to_contain_text("step 2")
    with page.expect_download() as download:
        page.click("#overview >> text=hello.txt")
    assert Path(download.value.path()).read_text() == "hello world\n"

    page.goto("/workspaces/demo/jobs/new/")
    page.select_option("select[name=compute]", "k8s")
    page.select_option("select[name=instance_type]", "gpu-huge")
    page.fill("textarea[name=spec]", "command: echo never\ndisplay_name: waits-for-gpu\n")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("waits-for-gpu")
    expect(page.locator("#job-status")).to_have_text("Queued")
    expect(page.locator("main")).to_contain_text("0/1 nodes are available", timeout=30_000)
    expect(page.locator("main")).to_contain_text("didn't match Pod's node affinity/selector")


METRICS_SCRIPT = """
import json, os, urllib.request
def post(endpoint, body):
    request = urllib.request.Request(
        os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/" + endpoint,
        json.dumps(body).encode(),
        {"Content-Type": "application/json",
         "Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]})
    urllib.request.urlopen(request)
run = os.environ["MLFLOW_RUN_ID"]
post("runs/log-parameter", {"run_id": run, "key": "lr", "value": "0.01"})
post("runs/log-batch", {"run_id": run, "metrics": [
    {"key": "loss", "value": 1.0 / (step + 1), "timestamp": step, "step": step}
    for step in range(10)]})
"""


def test_a_jobs_metrics_are_charted_on_its_page(people, workspace, page, live_studio, settings):
    from playwright.sync_api import expect

    from jobs.services import Upload, submit_yaml
    from tests.conftest import code_archive

    settings.STUDIO_PUBLIC_URL = live_studio.url
    code = Upload(code_archive({"log.py": METRICS_SCRIPT.encode()}), "code.tar.gz")
    text = "command: python3 log.py\ncode: src\n"
    job = orm(lambda: submit_yaml(workspace, people.contributor, text, {"code": code}))
    sign_in(page, "carl", "pw-carl-12345")
    page.goto(f"/workspaces/demo/jobs/{job.name}/")
    expect(page.locator("#job-status")).to_have_text("Completed")
    page.reload()
    chart = page.locator("figure.chart", has_text="loss")
    expect(chart.locator(".js-plotly-plot")).to_be_visible()
    expect(chart.locator("g.trace")).to_have_count(1)
    expect(page.locator("#run-params")).to_contain_text("lr")
    expect(page.locator("#run-params")).to_contain_text("0.01")
    # Plotly comes from the studio itself, not a CDN.
    sources = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert all(src.startswith(live_studio.url) for src in sources), sources


LIVE_SCRIPT = (
    METRICS_SCRIPT.replace("for step in range(10)", "for step in range(5)")
    + """
import sys, time
while not os.path.exists(sys.argv[1]):  # the test says when to go on
    time.sleep(0.05)
post("runs/log-batch", {"run_id": run, "metrics": [
    {"key": "loss", "value": 0.1, "timestamp": step, "step": step} for step in range(5, 12)]})
while not os.path.exists(sys.argv[1] + ".end"):
    time.sleep(0.05)
"""
)


def _run_id(job: Job) -> str:
    return job.run_id


def test_a_running_jobs_charts_grow_as_it_logs(people, workspace, page, live_studio, settings):
    """The chart shows new points while the job runs, without a reload: the run's socket
    says they came."""
    import tempfile

    from playwright.sync_api import expect

    from jobs.services import Upload, submit_yaml
    from tests.conftest import code_archive

    settings.STUDIO_PUBLIC_URL = live_studio.url
    folder = tempfile.mkdtemp(prefix="kstudio-live-")
    os.chmod(folder, 0o755)  # the job's own user looks for the go-ahead there
    go = os.path.join(folder, "go")
    code = Upload(code_archive({"log.py": LIVE_SCRIPT.encode()}), "code.tar.gz")
    text = f"command: python3 log.py {go}\ncode: src\n"
    job = orm(lambda: submit_yaml(workspace, people.contributor, text, {"code": code}))
    sign_in(page, "carl", "pw-carl-12345")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"/workspaces/demo/jobs/{job.name}/")
    points = page.locator("figure.chart", has_text="loss").locator("g.trace path.point")
    expect(points).to_have_count(5, timeout=30_000)
    expect(page.locator("#job-status")).to_have_text("Running")
    Path(go).touch()
    expect(points).to_have_count(12)
    expect(page.locator("#job-status")).to_have_text("Running")  # still: no reload did it
    assert any(url.endswith(f"/runs/{orm(lambda: _run_id(job))}/metrics/") for url in sockets)
    Path(go + ".end").touch()
    expect(page.locator("#job-status")).to_have_text("Completed", timeout=30_000)


def test_pick_jobs_in_the_list_and_compare_a_metric(people, workspace, page, live_studio, settings):
    from playwright.sync_api import expect

    from jobs.services import Upload, submit_yaml
    from tests.conftest import code_archive, wait_until

    settings.STUDIO_PUBLIC_URL = live_studio.url
    jobs = []
    for _ in range(3):
        code = Upload(code_archive({"log.py": METRICS_SCRIPT.encode()}), "code.tar.gz")
        text = "command: python3 log.py\ncode: src\n"
        jobs.append(orm(lambda: submit_yaml(workspace, people.contributor, text, {"code": code})))  # noqa: B023
    ids = [job.pk for job in jobs]
    wait_until(lambda: orm(lambda: Job.objects.filter(pk__in=ids, status="Completed").count())
               == len(ids), 60, "the jobs to end")  # fmt: skip
    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/jobs/")
    for job in jobs:
        page.check(f"input[name=jobs][value='{job.name}']")
    page.click("text=Compare the selected jobs' metrics")
    expect(page.locator("h1")).to_have_text("Compare 3 jobs")
    expect(page.locator("#compare-chart g.trace")).to_have_count(3)
    with page.expect_download() as download:
        page.click("a:text-is('CSV')")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "job,step,value" and len(lines) == 1 + 3 * 10


CONSOLE_SCORE = b"""
import json, os, pickle

def init():
    global model
    with open(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.pkl"), "rb") as f:
        model = pickle.load(f)

def run(raw_data):
    return model.predict(json.loads(raw_data)["data"]).tolist()
"""


def test_deploy_a_registered_model_move_traffic_and_score_from_the_console(
    people, workspace, page, live_studio, settings, tmp_path
):
    """From the endpoint page: two deployments of a registered scikit-learn model, the
    traffic moved from blue to green with the sliders, and the test console's request
    answered by green."""
    import io
    import pickle
    import sys

    from playwright.sync_api import expect
    from sklearn.linear_model import LogisticRegression

    from registry.services import create_model

    # It scores with the studio's own scikit-learn, which may sit where other users cannot
    # read: so as the studio's user (STUDIO_DEPLOYMENT_UID_BASE=0).
    settings.STUDIO_DEPLOYMENT_PYTHON = sys.executable
    settings.STUDIO_DEPLOYMENT_UID_BASE = 0
    fitted = LogisticRegression().fit(
        [[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]], [0, 1, 0, 1]
    )
    weights = io.BytesIO(pickle.dumps(fitted))
    orm(lambda: create_model(workspace, people.contributor,
                             {"name": "clf", "path": "model.pkl"}, weights))  # fmt: skip
    score = tmp_path / "score.py"
    score.write_bytes(CONSOLE_SCORE)
    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/endpoints/")
    page.fill("input[name=name]", "iris-live")
    page.click("button:text('Create endpoint')")
    expect(page.locator("h1")).to_contain_text("iris-live")
    for color in ("blue", "green"):
        page.fill("#new-deployment input[name=name]", color)
        page.set_input_files("#new-deployment input[name=code]", str(score))
        if color == "blue":
            page.check("#new-deployment input[name=all_traffic]")
        page.click("#new-deployment button[type=submit]")
        row = page.locator(f"tr[data-deployment={color}] [data-state]")
        expect(row).to_have_text("Succeeded", timeout=60_000)
    page.reload()
    page.locator("input[data-share-of=blue]").fill("0")
    page.locator("input[data-share-of=green]").fill("100")
    expect(page.locator("output[data-share-shown=green]")).to_have_text("100")
    page.click("#traffic button[type=submit]")
    expect(page.locator("main")).to_contain_text("Traffic: blue 0%, green 100%.")
    page.fill("#console textarea[name=request]", '{"data": [[1.0, 1.0], [0.0, 0.0]]}')
    page.click("#console button[type=submit]")
    expect(page.locator("#console-answer [data-deployment]")).to_have_text("green")
    expect(page.locator("#console-answer [data-status]")).to_have_text("200")
    expect(page.locator("#console-answer pre")).to_have_text("[1, 0]")
    page.click("text=Show keys")
    expect(page.locator("#keys dt")).to_have_count(2)
    # Green's page follows its log live: the console's request is there, by instance.
    page.goto("/workspaces/demo/endpoints/iris-live/green/")
    served = page.get_by_role("log").locator("span.line", has_text="POST /score")
    expect(served.first).to_contain_text("[g1-instance-0 inference-server]")
    expect(page.locator("#log-state")).to_have_text("Live.")


BATCH_SCORE = b"""
import os

def init():
    global factor
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.txt")) as f:
        factor = float(f.read())

def run(mini_batch):
    rows = []
    for path in mini_batch:
        with open(path) as f:
            rows.append(os.path.basename(path) + " " + str(factor * float(f.read())))
    return rows
"""


def test_create_a_batch_deployment_and_invoke_it_with_files_from_the_pages(
    people, workspace, page, live_studio, settings, tmp_path
):
    """A batch endpoint made on its page, a deployment of a registered model with its
    scoring script, an invocation with files picked in the browser, and the job's
    progress shown until all its mini-batches are done."""
    import io

    from playwright.sync_api import expect

    from registry.services import create_model

    settings.STUDIO_JOB_UID_BASE = 0  # as the studio's user: its python is under /root
    settings.STUDIO_PUBLIC_URL = live_studio.url  # as `serve` sets it: jobs report there
    factor = {"name": "doubler", "path": "factor.txt"}
    orm(lambda: create_model(workspace, people.contributor, factor, io.BytesIO(b"2")))
    score = tmp_path / "batch_score.py"
    score.write_bytes(BATCH_SCORE)
    inputs = []
    for i in range(3):
        (tmp_path / f"n{i}.txt").write_text(str(i + 1))
        inputs.append(str(tmp_path / f"n{i}.txt"))
    sign_in(page, "carl", "pw-carl-12345")
    page.goto("/workspaces/demo/batch-endpoints/")
    page.fill("input[name=name]", "doubling")
    page.click("button:text('Create batch endpoint')")
    expect(page.locator("h1")).to_contain_text("doubling")
    page.fill("#new-deployment input[name=name]", "first")
    page.fill("#new-deployment input[name=scoring_script]", "batch_score.py")
    page.set_input_files("#new-deployment input[name=code]", str(score))
    page.fill("#new-deployment input[name=mini_batch_size]", "1")
    page.click("#new-deployment button[type=submit]")
    expect(page.locator("main")).to_contain_text("Deployment first saved.")
    expect(page.locator("tr[data-deployment=first]")).to_contain_text("default")
    page.set_input_files("#invoke input[name=upload]", inputs)
    page.click("#invoke button[type=submit]")
    expect(page.locator("main")).to_contain_text("started.")
    progress = page.locator("#batch-jobs [data-progress]").first
    expect(progress).to_have_text("3 done, 0 failed, 0 left", timeout=60_000)
    expect(page.locator("#batch-jobs .status").first).to_have_text("Completed", timeout=30_000)
