"""`kstudio`: the command line for data scientists. An HTTP client of the studio's API only.

Configuration comes from flags or KSTUDIO_URL, KSTUDIO_TOKEN and KSTUDIO_WORKSPACE.
Exit codes: 0 success, 1 failure (including a streamed job that did not complete),
2 invalid input (the studio's field errors are printed one a line).
"""

from __future__ import annotations

import functools
import json
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
import yaml
from tabulate import tabulate

DATA_TYPES = ("uri_file", "uri_folder", "mltable")
SKIP_IN_CODE = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}


class Studio:
    def __init__(self, url: str, token: str | None, workspace: str) -> None:
        self.url = url.rstrip("/")
        self.workspace = workspace
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)
        self.token = token

    def jobs_path(self, name: str = "") -> str:
        base = f"/workspaces/{self.workspace}/jobs/"
        return f"{base}{name}/" if name else base

    def request(
        self,
        method: str,
        path: str,
        *,
        local_errors: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; print the studio's field errors (and ours) and exit 2 on bad input."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the studio at {self.url}: {exc}")
        if response.status_code == 400 or local_errors:
            body = _json(response) if response.status_code == 400 else {}
            errors = [(e["field"], e["message"]) for e in (body.get("errors") or [])]
            if response.status_code == 400 and not errors:
                errors = [("(request)", response.text)]
            ours = {field for field, _ in local_errors}
            # The studio cannot see a missing local folder; our word on that field wins.
            errors = [
                e for e in errors if e[0].removesuffix(".path") not in ours and e[0] not in ours
            ] + list(local_errors)
            for field, message in errors:
                click.echo(f"ERROR: {field}: {message}", err=True)
            sys.exit(2)
        if response.status_code == 401:
            fail("authentication failed: set KSTUDIO_TOKEN (manage.py createtoken prints one)")
        if response.status_code >= 400:
            body = _json(response)
            detail = body.get("detail") if isinstance(body, dict) else None
            fail(detail or f"the studio answered {response.status_code}")
        return response

    def ws_url(self, path: str) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


def pass_studio(f: Any) -> Any:
    """Hand the command its Studio; `-w` is also accepted after the command, as az ml has it."""

    @click.option(
        "-w",
        "--workspace",
        "workspace_here",
        default=None,
        help="Workspace (overrides the one given before the command).",
    )
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(studio: Studio, *args: Any, workspace_here: str | None, **kwargs: Any) -> Any:
        if workspace_here:
            studio.workspace = workspace_here
        return f(studio, *args, **kwargs)

    return wrapper


def output_option(f: Any) -> Any:
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=click.Choice(["table", "json", "tsv"]),
        default="table",
        show_default=True,
        help="Output format (tsv: values only, tab-separated, as `az -o tsv`).",
    )(f)


def emit(data: Any, fmt: str, columns: list[str] | None = None) -> None:
    if fmt == "tsv":
        rows = data if isinstance(data, list) else [data]
        for row in rows:
            if isinstance(row, dict):
                click.echo("\t".join(_cell(row.get(c)) for c in columns or list(row)))
            else:
                click.echo(_cell(row))
        return
    if fmt == "json" or columns is None:
        click.echo(json.dumps(data, indent=2))
        return
    rows = data if isinstance(data, list) else [data]
    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    click.echo(tabulate(table, headers=[c.replace("_", " ").title() for c in columns]))


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


@click.group()
@click.option(
    "--url",
    envvar="KSTUDIO_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The studio's address (KSTUDIO_URL).",
)
@click.option("--token", envvar="KSTUDIO_TOKEN", help="API token (KSTUDIO_TOKEN).")
@click.option(
    "-w",
    "--workspace",
    envvar="KSTUDIO_WORKSPACE",
    default="demo",
    show_default=True,
    help="Workspace (KSTUDIO_WORKSPACE).",
)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, workspace: str) -> None:
    """KubeStudio command line."""
    ctx.obj = Studio(url, token, workspace)


# -- jobs ------------------------------------------------------------------------------------
@main.group()
def job() -> None:
    """Submit, follow and manage jobs."""


def _load(file: str, sets: tuple[str, ...]) -> tuple[dict[str, Any], str, Path]:
    path = Path(file)
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", 2)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}", 2)
    if not isinstance(data, dict):
        fail(f"{file} must hold a YAML mapping of job fields", 2)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set takes key=value, not {item!r}", 2)
        set_value(data, key, value)
    if sets:
        text = yaml.safe_dump(data, sort_keys=False)
    return data, text, path.parent


def set_value(data: dict[str, Any], dotted: str, raw: str) -> None:
    """`--set a.b=value`: the value is read as a YAML scalar, as the Azure CLI does."""
    target = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        nested = target.get(key)
        if not isinstance(nested, dict):
            nested = {}
            target[key] = nested
        target = nested
    target[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def _archive_folder(folder: Path) -> IO[bytes]:
    """The folder as a .tar.gz in a temporary file: a data folder may be larger than
    memory, and the upload streams it from disk."""
    buffer = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the upload
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        if folder.is_file():
            archive.add(folder, arcname=folder.name)
        else:
            for item in sorted(folder.iterdir()):
                if item.name not in SKIP_IN_CODE:
                    archive.add(
                        item,
                        arcname=item.name,
                        filter=lambda t: None if Path(t.name).name in SKIP_IN_CODE else t,
                    )
    buffer.seek(0)
    return buffer


def _uploads(
    data: dict[str, Any], base: Path, errors: list[tuple[str, str]]
) -> dict[str, tuple[str, Any]]:
    """Local folders and files the job names, packed for upload; missing ones go to errors."""
    files: dict[str, tuple[str, Any]] = {}
    code = data.get("code")
    if isinstance(code, str) and "://" not in code and not code.startswith("azureml:"):
        folder = (base / code).resolve()
        if folder.exists():
            files["code"] = ("code.tar.gz", _archive_folder(folder))
        else:
            errors.append(("code", f"{folder} does not exist"))
    for name, item in (data.get("inputs") or {}).items():
        if not isinstance(item, dict) or item.get("type") not in DATA_TYPES:
            continue
        target = str(item.get("path", ""))
        if not target or "://" in target or target.startswith("azureml:"):
            continue
        path = (base / target).resolve()
        if not path.exists():
            errors.append((f"inputs.{name}.path", f"{path} does not exist"))
        elif item["type"] != "uri_file":  # a folder (an MLTable is one)
            files[f"inputs.{name}"] = (f"{name}.tar.gz", _archive_folder(path))
        else:
            files[f"inputs.{name}"] = (path.name, path.open("rb"))
    return files


def _submit(studio: Studio, file: str, sets: tuple[str, ...], path: str) -> dict[str, Any]:
    data, text, base = _load(file, sets)
    local_errors: list[tuple[str, str]] = []
    files = _uploads(data, base, local_errors)
    if isinstance(data.get("environment"), dict) and isinstance(
        data["environment"].get("conda_file"), str
    ):  # the studio takes the conda file's content, not a path on this machine
        local_errors += assets.inline_conda_file(data["environment"], base, "environment")
        text = yaml.safe_dump(data, sort_keys=False)
    if local_errors:  # still ask the studio, to report every problem at once
        path = studio.jobs_path() + "validate/"
    if files:
        response = studio.request(
            "POST", path, data={"spec": text}, files=files, local_errors=local_errors
        )
    else:
        response = studio.request("POST", path, json={"yaml": text}, local_errors=local_errors)
    result: dict[str, Any] = response.json()
    return result


JOB_COLUMNS = ["name", "display_name", "experiment_name", "status", "compute", "instance_type"]


@job.command("create")
@click.option("-f", "--file", required=True, help="The job's YAML file.")
@click.option(
    "--set", "sets", multiple=True, help="Set a field: --set resources.instance_type=cpu-small"
)
@click.option("--name", help="Name of the job (overrides the YAML).")
@click.option("--stream", is_flag=True, help="Follow the logs until the job ends.")
@output_option
@pass_studio
def job_create(
    studio: Studio, file: str, sets: tuple[str, ...], name: str | None, stream: bool, fmt: str
) -> None:
    """Submit a job from an Azure ML CLI v2 YAML file."""
    if name:
        sets = (*sets, f"name={name}")
    result = _submit(studio, file, sets, studio.jobs_path())
    if stream:
        click.echo(
            f"Job {result['name']} submitted: {result['services']['Studio']['endpoint']}", err=True
        )
        sys.exit(_stream(studio, result["name"]))
    emit(result, fmt, JOB_COLUMNS)


@job.command("validate")
@click.option("-f", "--file", required=True, help="The job's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field before validating.")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="yaml: the exact objects a Kubernetes compute would create, as one YAML stream.",
)
@pass_studio
def job_validate(studio: Studio, file: str, sets: tuple[str, ...], fmt: str) -> None:
    """Check a job file without submitting it (exit 2 with every problem when invalid)."""
    result = _submit(studio, file, sets, studio.jobs_path() + "validate/")
    if fmt == "json":
        emit(result, fmt)
    elif fmt == "yaml":
        if not result.get("objects"):
            fail(f"compute {result['compute']} creates no Kubernetes objects (local processes)")
        click.echo(yaml.safe_dump_all(result["objects"], sort_keys=False), nl=False)
    else:
        click.echo(
            f"{file} is valid: compute {result['compute']}, "
            f"instance type {result['instance_type']}."
        )


@job.command("list")
@click.option("--status", help="Only jobs in this state.")
@click.option("--experiment-name", help="Only this experiment's jobs.")
@click.option("--max-results", "-r", type=int, default=50, show_default=True)
@output_option
@pass_studio
def job_list(
    studio: Studio, status: str | None, experiment_name: str | None, max_results: int, fmt: str
) -> None:
    """List the workspace's jobs, newest first."""
    params: dict[str, Any] = {"limit": max_results}
    if status:
        params["status"] = status
    if experiment_name:
        params["experiment_name"] = experiment_name
    emit(
        studio.request("GET", studio.jobs_path(), params=params).json()["results"], fmt, JOB_COLUMNS
    )


@job.command("show")
@click.argument("name")
@output_option
@pass_studio
def job_show(studio: Studio, name: str, fmt: str) -> None:
    """Show one job."""
    emit(
        studio.request("GET", studio.jobs_path(name)).json(),
        fmt,
        [*JOB_COLUMNS, "exit_code", "failure_reason"],
    )


@job.command("cancel")
@click.argument("name")
@output_option
@pass_studio
def job_cancel(studio: Studio, name: str, fmt: str) -> None:
    """Cancel a job."""
    emit(studio.request("POST", studio.jobs_path(name) + "cancel/").json(), fmt, JOB_COLUMNS)


@job.command("stream")
@click.argument("name")
@pass_studio
def job_stream(studio: Studio, name: str) -> None:
    """Follow a job's logs to its end; exit 0 only when it Completed."""
    studio.request("GET", studio.jobs_path(name))  # a clear error for a wrong name
    sys.exit(_stream(studio, name))


def _stream(studio: Studio, name: str) -> int:
    def show(message: dict[str, Any]) -> int | None:
        if message.get("type") == "end":
            status = message["status"]
            click.echo(f"Job {name} ended: {status}", err=True)
            return 0 if status == "Completed" else 1
        click.echo(message["line"], err=message["stream"] == "stderr")
        return None

    return follow_socket(studio, f"/ws/workspaces/{studio.workspace}/jobs/{name}/logs/", show)


def follow_socket(studio: Studio, path: str, handle: Callable[[dict[str, Any]], int | None]) -> int:
    """A log socket's messages, each given to `handle` until it returns an exit code;
    on a lost connection, resumed after the last line's seq."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    last = 0
    headers = {"Authorization": f"Bearer {studio.token}"} if studio.token else {}
    failures = 0
    while True:
        url = studio.ws_url(f"{path}?after={last}")
        try:
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                failures = 0
                for raw in ws:
                    message = json.loads(raw)
                    last = message.get("seq", last)
                    code = handle(message)
                    if code is not None:
                        return code
        except InvalidStatus as exc:
            fail(f"the studio refused the log stream ({exc.response.status_code})")
        except (ConnectionClosed, OSError) as exc:
            failures += 1
            if failures > 5:
                fail(f"lost the log stream: {exc}")
            import time

            time.sleep(min(5.0, 0.25 * 2**failures))  # back off, then resume after `last`


def download_zip(studio: Studio, path: str, target: Path) -> int:
    """A zip the studio streams, unpacked into `target`; how many files it held."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as spool:  # on disk as it arrives: it may outgrow memory
        with studio.http.stream("GET", path) as response:
            if response.status_code != 200:
                response.read()
                studio.request("GET", path)  # reports the error and exits
            for chunk in response.iter_bytes(1024 * 1024):
                spool.write(chunk)
        with zipfile.ZipFile(spool) as archive:
            archive.extractall(target)  # noqa: S202 - zipfile drops absolute and .. paths
            return len(archive.namelist())


@job.command("download")
@click.argument("name")
@click.option("--output-name", help="A named output (default: the job's ./outputs).")
@click.option("--all", "everything", is_flag=True, help="Every output of the job.")
@click.option("--download-path", "-p", default=".", show_default=True, type=click.Path())
@pass_studio
def job_download(
    studio: Studio, name: str, output_name: str | None, everything: bool, download_path: str
) -> None:
    """Download a job's outputs, laid out as `az ml job download` does."""
    job_data = studio.request("GET", studio.jobs_path(name)).json()
    if everything:
        outputs = ["default", *(job_data.get("outputs") or {})]
    else:
        outputs = [output_name or "default"]
    for output in outputs:
        if output == "default":
            target = Path(download_path) / "artifacts" / "outputs"
        else:
            target = Path(download_path) / "named-outputs" / output
        count = download_zip(studio, studio.jobs_path(name) + f"outputs/{output}/", target)
        click.echo(f"Downloaded {count} file(s) of output {output!r} to {target}")


# -- workspaces ------------------------------------------------------------------------------
@main.group()
def workspace() -> None:
    """Workspaces you are a member of, and their members."""


@workspace.command("list")
@output_option
@pass_studio
def workspace_list(studio: Studio, fmt: str) -> None:
    """List the workspaces you are a member of."""
    items = studio.request("GET", "/workspaces/", params={"limit": 500}).json()["results"]
    emit(items, fmt, ["name", "description", "default_compute"])


@workspace.command("show")
@output_option
@pass_studio
def workspace_show(studio: Studio, fmt: str) -> None:
    """The workspace, and its MLflow tracking URI (with MLFLOW_TRACKING_TOKEN set to one of
    your tokens, the stock mlflow client logs there)."""
    shown = studio.request("GET", f"/workspaces/{studio.workspace}/").json()
    shown["tracking_uri"] = f"{studio.url}/workspaces/{studio.workspace}/mlflow"
    emit(shown, fmt, ["name", "description", "default_compute", "tracking_uri"])


@workspace.command("members")
@output_option
@pass_studio
def workspace_members(studio: Studio, fmt: str) -> None:
    """List the workspace's members and their roles."""
    path = f"/workspaces/{studio.workspace}/members/"
    emit(
        studio.request("GET", path, params={"limit": 500}).json()["results"],
        fmt,
        ["username", "role"],
    )


# -- compute ---------------------------------------------------------------------------------
@main.group()
def compute() -> None:
    """Compute targets of the workspace."""


@compute.command("list")
@output_option
@pass_studio
def compute_list(studio: Studio, fmt: str) -> None:
    """List the workspace's compute targets."""
    path = f"/workspaces/{studio.workspace}/computes/"
    emit(
        studio.request("GET", path).json()["results"],
        fmt,
        ["name", "type", "cluster", "namespace", "description", "instance_types"],
    )


def admin_options(command: Any) -> Any:
    """--kubeconfig and --context for an act that changes the studio's rights."""
    command = click.option("--context", default="", help="Its context (default: current).")(command)
    return click.option(
        "--kubeconfig", "kubeconfig_file", type=click.File("r"),
        help="A cluster admin's kubeconfig for this act (used once, not kept): needed "
        "once the studio holds only the extension's own credentials.",
    )(command)  # fmt: skip


def _admin(kubeconfig_file: Any, context: str) -> dict[str, str]:
    return {"kubeconfig": kubeconfig_file.read() if kubeconfig_file else "", "context": context}


@compute.command("attach")
@click.option("--name", help="The compute target's name in the workspace.")
@click.option("--type", "kind", type=click.Choice(["kubernetes"]), default=None)
@click.option("--cluster", "cluster_name", help="A cluster IT-ops registered.")
@click.option("--namespace", default=None, help="Where its work runs (default: default).")
@click.option("--create-namespace", is_flag=True, help="Create the namespace if missing.")
@click.option("--image-pull-secret", default=None, help="A Secret pods pull images with.")
@click.option("--description", default=None)
@click.option(
    "-f", "--file", "file", type=click.File("r"), help="Azure's compute YAML (type: kubernetes)."
)
@admin_options
@output_option
@pass_studio
def compute_attach(
    studio: Studio,
    name: str | None,
    kind: str | None,
    cluster_name: str | None,
    namespace: str | None,
    create_namespace: bool,
    image_pull_secret: str | None,
    description: str | None,
    file: Any,
    kubeconfig_file: Any,
    context: str,
    fmt: str,
) -> None:
    """Attach a cluster to the workspace as a compute target (IT-ops). A namespace the
    extension does not reach yet is granted with a cluster admin's --kubeconfig."""
    body: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file)
        if not isinstance(loaded, dict):
            fail("the compute YAML must be a mapping", 2)
        body.update({k: v for k, v in loaded.items() if k != "$schema"})
    given = {"name": name, "type": kind, "cluster": cluster_name, "namespace": namespace,
             "description": description, "image_pull_secret": image_pull_secret}  # fmt: skip
    body.update({k: v for k, v in given.items() if v is not None})
    body["create_namespace"] = create_namespace
    if kubeconfig_file is not None:
        body.update(_admin(kubeconfig_file, context))
    body.setdefault("type", "kubernetes")
    path = f"/workspaces/{studio.workspace}/computes/"
    made = studio.request("POST", path, json=body).json()
    emit(made, fmt, ["name", "type", "cluster", "namespace", "is_default"])


@compute.command("detach")
@click.argument("name")
@pass_studio
def compute_detach(studio: Studio, name: str) -> None:
    """Remove a compute target (refused while it has active jobs); nothing running stops."""
    studio.request("DELETE", f"/workspaces/{studio.workspace}/computes/{name}/")
    click.echo(f"Detached {name}.")


@compute.command("show")
@click.argument("name")
@output_option
@pass_studio
def compute_show(studio: Studio, name: str, fmt: str) -> None:
    """Show one compute target."""
    path = f"/workspaces/{studio.workspace}/computes/{name}/"
    emit(studio.request("GET", path).json(), fmt, ["name", "type", "description", "instance_types"])


# -- clusters (IT-ops) --------------------------------------------------------------------
@main.group()
def cluster() -> None:
    """Kubernetes clusters (IT-ops): register, check, remove."""


@cluster.command("create")
@click.option("--name", required=True)
@click.option(
    "--kubeconfig",
    "kubeconfig_file",
    type=click.File("r"),
    help="The kubeconfig file (kept encrypted by the studio, never shown again).",
)
@click.option("--context", default="", help="Its context (default: the current one).")
@click.option("--in-cluster", is_flag=True, help="Use the studio pod's own service account.")
@click.option("--studio-url", default="", help="How the cluster's pods reach the studio.")
@click.option("--description", default="")
@output_option
@pass_studio
def cluster_create(
    studio: Studio,
    name: str,
    kubeconfig_file: Any,
    context: str,
    in_cluster: bool,
    studio_url: str,
    description: str,
    fmt: str,
) -> None:
    """Register a cluster from a kubeconfig."""
    body = {
        "name": name,
        "kubeconfig": kubeconfig_file.read() if kubeconfig_file else "",
        "context": context,
        "in_cluster": in_cluster,
        "studio_url": studio_url,
        "description": description,
    }
    emit(studio.request("POST", "/clusters/", json=body).json(), fmt, ["name", "server", "context"])


@cluster.command("list")
@output_option
@pass_studio
def cluster_list(studio: Studio, fmt: str) -> None:
    """List the registered clusters."""
    items = studio.request("GET", "/clusters/", params={"limit": 500}).json()["results"]
    emit(items, fmt, ["name", "server", "context", "attachments"])


@cluster.command("show")
@click.argument("name")
@output_option
@pass_studio
def cluster_show(studio: Studio, name: str, fmt: str) -> None:
    """A cluster, and what it answers now: version, nodes, what the credentials may do."""
    data = studio.request("GET", f"/clusters/{name}/").json()
    if fmt == "json":
        emit(data, fmt)
        return
    status = data.get("status") or {}
    rows = [
        ("name", data["name"]),
        ("server", data["server"]),
        ("context", data["context"]),
        ("credentials", data.get("credentials", "")),
        ("attachments", _cell(data.get("attachments"))),
        ("reachable", "yes" if status.get("reachable") else "no"),
        ("version", status.get("version", "")),
        ("nodes ready", _cell(status.get("nodes_ready"))),
        ("may", _cell(status.get("allowed"))),
        ("may not", _cell(status.get("denied"))),
        ("problem", status.get("message", "")),
    ]
    click.echo(tabulate([r for r in rows if r[1] not in ("", None)], tablefmt="plain"))


@cluster.command("install")
@click.argument("name")
@click.option("--set", "pairs", multiple=True, help="A setting, key=value (repeatable).")
@admin_options
@output_option
@pass_studio
def cluster_install(
    studio: Studio, name: str, pairs: tuple[str, ...], kubeconfig_file: Any, context: str,
    fmt: str,
) -> None:  # fmt: skip
    """Install or update the studio's extension (CRD, RBAC, namespaces) in the cluster;
    from then on the studio keeps only the extension's ServiceAccount token."""
    body = {"set": list(pairs), **_admin(kubeconfig_file, context)}
    result = studio.request("POST", f"/clusters/{name}/install/", json=body).json()
    if fmt == "json":
        emit(result, fmt)
    for problem in result["problems"]:
        click.echo(f"PROBLEM: {problem}", err=True)
    if result["problems"]:
        fail("nothing was applied: fix the problems above and install again")
    if fmt != "json":
        emit(result["applied"], fmt, ["kind", "name", "outcome"])
    if any(a["outcome"].startswith("failed") for a in result["applied"]):
        sys.exit(1)


@cluster.command("manifests")
@click.argument("name")
@pass_studio
def cluster_manifests(studio: Studio, name: str) -> None:
    """Print the extension's objects as one YAML stream (for GitOps)."""
    click.echo(studio.request("GET", f"/clusters/{name}/manifests/").text, nl=False)


@cluster.command("uninstall")
@click.argument("name")
@admin_options
@output_option
@pass_studio
def cluster_uninstall(
    studio: Studio, name: str, kubeconfig_file: Any, context: str, fmt: str
) -> None:
    """Remove what install made (attached namespaces are kept)."""
    body = _admin(kubeconfig_file, context)
    result = studio.request("POST", f"/clusters/{name}/uninstall/", json=body).json()
    emit(result["removed"] if fmt != "json" else result, fmt, ["kind", "name", "outcome"])


@cluster.command("nodes")
@click.argument("name")
@output_option
@pass_studio
def cluster_nodes(studio: Studio, name: str, fmt: str) -> None:
    """Nodes (allocatable, requested now) and where each instance type fits."""
    report = studio.request("GET", f"/clusters/{name}/nodes/").json()
    if fmt == "json":
        emit(report, fmt)
        return
    emit(report["nodes"], fmt, ["name", "ready", "labels", "taints", "allocatable", "requested"])
    click.echo()
    emit(report["instance_types"], fmt, ["name", "fits", "warning"])


@cluster.command("delete")
@click.argument("name")
@pass_studio
def cluster_delete(studio: Studio, name: str) -> None:
    """Forget a cluster (refused while it is attached anywhere)."""
    studio.request("DELETE", f"/clusters/{name}/")
    click.echo(f"Deleted cluster {name}.")


@main.group("instance-type")
def instance_type() -> None:
    """Instance types: the sizes jobs can ask for."""


@instance_type.command("list")
@click.option("--cluster", default=None, help="A cluster's set (default: the local host's).")
@output_option
@pass_studio
def instance_type_list(studio: Studio, cluster: str | None, fmt: str) -> None:
    """List instance types with their node selector and resources."""
    path = f"/clusters/{cluster}/instance-types/" if cluster else "/instance-types/"
    items = studio.request("GET", path, params={"limit": 500}).json()["results"]
    if fmt == "json":
        emit(items, fmt)
        return
    rows = [
        {
            "name": item["name"],
            "node_selector": item.get("nodeSelector") or {},
            "requests": (item.get("resources") or {}).get("requests") or {},
            "limits": (item.get("resources") or {}).get("limits") or {},
            "origin": item.get("origin", ""),
        }
        for item in items
    ]
    emit(rows, fmt, ["name", "node_selector", "requests", "limits", "origin"])


@instance_type.command("create")
@click.option(
    "-f",
    "--file",
    "file",
    type=click.File("r"),
    required=True,
    help="An InstanceType or InstanceTypeList (kstudio.io or Azure's amlarc group).",
)
@click.option("--cluster", required=True, help="The cluster whose set it joins.")
@output_option
@pass_studio
def instance_type_create(studio: Studio, file: Any, cluster: str, fmt: str) -> None:
    """Create or replace instance types in a cluster, as `kubectl apply` would."""
    try:
        document = yaml.safe_load(file)
    except yaml.YAMLError as exc:
        fail(f"{file.name}: not YAML: {exc}", 2)
    made = studio.request("POST", f"/clusters/{cluster}/instance-types/", json=document).json()
    emit(made, fmt, ["name", "nodeSelector", "resources"])


@instance_type.command("delete")
@click.argument("name")
@click.option("--cluster", required=True)
@pass_studio
def instance_type_delete(studio: Studio, name: str, cluster: str) -> None:
    """Delete an instance type from a cluster (defaultinstancetype falls back to the
    built-in one)."""
    studio.request("DELETE", f"/clusters/{cluster}/instance-types/{name}/")
    click.echo(f"Deleted instance type {name} from {cluster}.")


# Commands kept in their own modules register themselves on `main` when imported.
from kstudio_cli import assets, batch, endpoints, models  # noqa: E402

__all__ = ["assets", "batch", "endpoints", "main", "models"]

if __name__ == "__main__":
    main()
