"""`kstudio online-endpoint ...` and `kstudio online-deployment ...`, as Azure's
safe-rollout example scripts use `az ml online-endpoint` / `online-deployment`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

from kstudio_cli import (
    Studio,
    _archive_folder,
    _load,
    emit,
    fail,
    follow_socket,
    main,
    output_option,
    pass_studio,
)
from kstudio_cli.assets import _is_local, inline_conda_file

ENDPOINT_COLUMNS = ["name", "auth_mode", "traffic", "provisioning_state", "scoring_uri"]
DEPLOYMENT_COLUMNS = ["name", "endpoint_name", "model", "instance_count", "provisioning_state"]


def _shares(text: str | None, option: str) -> dict[str, int] | None:
    """--traffic "blue=90 green=10" -> {"blue": 90, "green": 10}."""
    if text is None:
        return None
    shares: dict[str, int] = {}
    for item in text.replace(",", " ").split():
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            fail(f'{option} takes NAME=PERCENT pairs, as "blue=90 green=10"; not {item!r}', 2)
        shares[name] = int(value)
    return shares


def _query(data: Any, query: str | None) -> Any:
    """--query a.b: one field of the answer (a field path, not all of JMESPath)."""
    if not query:
        return data
    for part in query.split("."):
        if not isinstance(data, dict) or part not in data:
            fail(f"--query: the answer has no {query!r}", 2)
        data = data[part]
    return data


def _emit(data: Any, fmt: str, columns: list[str], query: str | None) -> None:
    picked = _query(data, query)
    if query and fmt != "json":
        click.echo(picked if not isinstance(picked, dict | list) else json.dumps(picked))
    else:
        emit(picked, fmt, columns if not query else None)


def query_option(f: Any) -> Any:
    return click.option("--query", help="Show one field, as scoring_uri.")(f)


# -- endpoints -------------------------------------------------------------------------------
@main.group("online-endpoint")
def online_endpoint() -> None:
    """Online endpoints: a scoring URI with keys, and the traffic split over deployments."""


def _endpoint_path(studio: Studio, name: str = "") -> str:
    return f"/workspaces/{studio.workspace}/online-endpoints/" + (f"{name}/" if name else "")


@online_endpoint.command("create")
@click.option("-f", "--file", "file_", help="The endpoint's YAML file.")
@click.option("-n", "--name", help="The endpoint's name (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set auth_mode=aml_token")
@output_option
@pass_studio
def endpoint_create(
    studio: Studio, file_: str | None, name: str | None, sets: tuple[str, ...], fmt: str
) -> None:
    """Create an endpoint (its deployments come with online-deployment create)."""
    extra = (*sets, f"name={name}") if name else sets
    if file_:
        _data, text, _base = _load(file_, extra)
    else:
        text = yaml.safe_dump({k: v for k, _, v in (s.partition("=") for s in extra)})
    made = studio.request("POST", _endpoint_path(studio), json={"yaml": text}).json()
    emit(made, fmt, ENDPOINT_COLUMNS)


@online_endpoint.command("update")
@click.option("-n", "--name", required=True)
@click.option("-f", "--file", "file_", help="The endpoint's YAML file (all its fields).")
@click.option("--traffic", help='The split: "blue=90 green=10".')
@click.option("--mirror-traffic", help='A copy of some traffic: "green=10" (its answers dropped).')
@output_option
@pass_studio
def endpoint_update(
    studio: Studio,
    name: str,
    file_: str | None,
    traffic: str | None,
    mirror_traffic: str | None,
    fmt: str,
) -> None:
    """Update an endpoint: its whole YAML, or just its traffic."""
    path = _endpoint_path(studio, name)
    if file_:
        _data, text, _base = _load(file_, (f"name={name}",))
        studio.request("PUT", path, json={"yaml": text})
    shares = {
        "traffic": _shares(traffic, "--traffic"),
        "mirror_traffic": _shares(mirror_traffic, "--mirror-traffic"),
    }
    shares = {k: v for k, v in shares.items() if v is not None}
    if shares:
        studio.request("PATCH", path, json=shares)
    if not file_ and not shares:
        fail("give -f FILE, --traffic or --mirror-traffic", 2)
    emit(studio.request("GET", path).json(), fmt, ENDPOINT_COLUMNS)


@online_endpoint.command("show")
@click.option("-n", "--name", required=True)
@query_option
@output_option
@pass_studio
def endpoint_show(studio: Studio, name: str, query: str | None, fmt: str) -> None:
    """One endpoint: its scoring URI, traffic and state (never its keys)."""
    _emit(studio.request("GET", _endpoint_path(studio, name)).json(), fmt, ENDPOINT_COLUMNS, query)


@online_endpoint.command("list")
@output_option
@pass_studio
def endpoint_list(studio: Studio, fmt: str) -> None:
    """The workspace's endpoints."""
    emit(studio.request("GET", _endpoint_path(studio)).json(), fmt, ENDPOINT_COLUMNS)


@online_endpoint.command("delete")
@click.option("-n", "--name", required=True)
@click.option("--yes", is_flag=True, help="Do not ask (as az's --yes; kstudio never asks).")
@pass_studio
def endpoint_delete(studio: Studio, name: str, yes: bool) -> None:
    """Delete an endpoint and stop its deployments."""
    studio.request("DELETE", _endpoint_path(studio, name))
    click.echo(f"Deleting endpoint {name}.")


@online_endpoint.command("get-credentials")
@click.option("-n", "--name", required=True)
@query_option
@output_option
@pass_studio
def endpoint_credentials(studio: Studio, name: str, query: str | None, fmt: str) -> None:
    """The endpoint's keys (primaryKey, secondaryKey), or a token in aml_token mode."""
    found = studio.request("POST", _endpoint_path(studio, name) + "get-credentials/").json()
    _emit(found, "json" if fmt == "table" and not query else fmt, [], query)


@online_endpoint.command("regenerate-keys")
@click.option("-n", "--name", required=True)
@click.option(
    "--key-type", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True
)
@pass_studio
def endpoint_regenerate(studio: Studio, name: str, key_type: str) -> None:
    """A new key of one kind; the other keeps working meanwhile."""
    path = _endpoint_path(studio, name) + "regenerate-keys/"
    studio.request("POST", path, json={"key_type": key_type})
    click.echo(f"Regenerated the {key_type} key of {name}.")


@online_endpoint.command("invoke")
@click.option("-n", "--name", required=True)
@click.option("-r", "--request-file", required=True, type=click.Path(dir_okay=False))
@click.option("-d", "--deployment-name", help="Score with this deployment, whatever the split.")
@pass_studio
def endpoint_invoke(
    studio: Studio, name: str, request_file: str, deployment_name: str | None
) -> None:
    """Score a request file through the endpoint's router, with its key or a token."""
    endpoint = studio.request("GET", _endpoint_path(studio, name)).json()
    found = studio.request("POST", _endpoint_path(studio, name) + "get-credentials/").json()
    key = found.get("primaryKey") or found.get("accessToken")
    try:
        body = Path(request_file).read_bytes()
    except OSError as exc:
        fail(f"cannot read {request_file}: {exc.strerror}", 2)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment_name:
        headers["azureml-model-deployment"] = deployment_name
    try:
        answer = httpx.post(endpoint["scoring_uri"], content=body, headers=headers, timeout=300)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {endpoint['scoring_uri']}: {exc}")
    if answer.status_code >= 400:
        fail(
            f"{answer.status_code} from {answer.headers.get('azureml-model-deployment') or name}:"
            f" {answer.text}"
        )
    click.echo(answer.text)


# -- deployments -----------------------------------------------------------------------------
@main.group("online-deployment")
def online_deployment() -> None:
    """An endpoint's deployments: a model, its scoring script and environment, instances."""


def _deployment_path(studio: Studio, endpoint: str, name: str = "") -> str:
    return _endpoint_path(studio, endpoint) + "deployments/" + (f"{name}/" if name else "")


def _deployment_files(document: dict[str, Any], base: Path) -> tuple[dict[str, Any], str]:
    """The code folder and an inline model's files, as the studio takes them; the
    environment's conda file inlined."""
    files: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    code = (document.get("code_configuration") or {}).get("code")
    if isinstance(code, str) and _is_local(code):
        folder = (base / code).resolve()
        if not folder.is_dir():
            problems.append(("code_configuration.code", f"{folder} is not a folder"))
        else:
            files["code"] = ("code.tar.gz", _archive_folder(folder))
    model = document.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and _is_local(model["path"]):
        local = (base / model["path"]).resolve()
        if local.is_file():
            files["model_file"] = (local.name, local.open("rb"))
        elif local.is_dir():
            files["model_folder"] = (f"{local.name}.tar.gz", _archive_folder(local))
        else:
            problems.append(("model.path", f"{local} does not exist"))
    if isinstance(document.get("environment"), dict):
        problems += inline_conda_file(document["environment"], base, "environment")
    for field, message in problems:
        click.echo(f"ERROR: {field}: {message}", err=True)
    if problems:
        raise SystemExit(2)
    return files, yaml.safe_dump(document, sort_keys=False)


def send_deployment(
    studio: Studio,
    file_: str,
    sets: tuple[str, ...],
    names: tuple[str | None, str | None],
    method: str,
    path_of: Any,
    params: dict[str, str],
) -> dict[str, Any]:
    """POST (create) or PUT (update) a deployment's YAML and files; `names` (from --name
    and --endpoint-name) override the file's; `path_of(studio, endpoint, name)` is where."""
    name, endpoint = names
    extra = [f"{k}={v}" for k, v in (("name", name), ("endpoint_name", endpoint)) if v]
    document, _text, base = _load(file_, (*sets, *extra))
    endpoint_name = document.get("endpoint_name")
    if not isinstance(endpoint_name, str) or not isinstance(document.get("name"), str):
        fail("name and endpoint_name are needed (in the file, or --name / --endpoint-name)", 2)
    files, text = _deployment_files(document, base)
    path = path_of(studio, endpoint_name, document["name"] if method == "PUT" else "")
    return dict(
        studio.request(method, path, data={"spec": text}, files=files or None, params=params).json()
    )


def _send_deployment(
    studio: Studio,
    file_: str,
    sets: tuple[str, ...],
    name: str | None,
    endpoint: str | None,
    method: str,
    all_traffic: bool,
) -> dict[str, Any]:
    params = {"all_traffic": "true"} if all_traffic else {}
    return send_deployment(studio, file_, sets, (name, endpoint), method, _deployment_path, params)


def _wait(studio: Studio, shown: dict[str, Any], no_wait: bool) -> dict[str, Any]:
    """Until the deployment serves or fails (as `az` waits unless --no-wait)."""
    import time

    path = _deployment_path(studio, shown["endpoint_name"], shown["name"])
    while not no_wait and shown["provisioning_state"] not in ("Succeeded", "Failed", "Canceled"):
        time.sleep(1)
        shown = studio.request("GET", path).json()
    if shown["provisioning_state"] == "Failed":
        fail(
            f"deployment {shown['name']} failed: {shown['error_code']}: {shown['reason']} "
            "(online-deployment get-logs shows its log)"
        )
    return shown


@online_deployment.command("create")
@click.option("-f", "--file", "file_", required=True, help="The deployment's YAML file.")
@click.option("-n", "--name", help="The deployment's name (overrides the YAML).")
@click.option("-e", "--endpoint-name", help="Its endpoint (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set instance_count=2")
@click.option("--all-traffic", is_flag=True, help="Send all the endpoint's traffic to it.")
@click.option("--no-wait", is_flag=True, help="Do not wait until it serves.")
@output_option
@pass_studio
def deployment_create(
    studio: Studio,
    file_: str,
    name: str | None,
    endpoint_name: str | None,
    sets: tuple[str, ...],
    all_traffic: bool,
    no_wait: bool,
    fmt: str,
) -> None:
    """Create a deployment (the code folder and a local model are uploaded)."""
    shown = _send_deployment(studio, file_, sets, name, endpoint_name, "POST", all_traffic)
    emit(_wait(studio, shown, no_wait), fmt, DEPLOYMENT_COLUMNS)


@online_deployment.command("update")
@click.option("-f", "--file", "file_", required=True, help="The deployment's YAML file.")
@click.option("-n", "--name", help="The deployment's name (overrides the YAML).")
@click.option("-e", "--endpoint-name", help="Its endpoint (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set instance_count=2")
@click.option("--no-wait", is_flag=True, help="Do not wait until the new version serves.")
@output_option
@pass_studio
def deployment_update(
    studio: Studio,
    file_: str,
    name: str | None,
    endpoint_name: str | None,
    sets: tuple[str, ...],
    no_wait: bool,
    fmt: str,
) -> None:
    """Roll a deployment to a new version of its YAML (old instances serve until the new
    ones answer)."""
    shown = _send_deployment(studio, file_, sets, name, endpoint_name, "PUT", False)
    emit(_wait(studio, shown, no_wait), fmt, DEPLOYMENT_COLUMNS)


@online_deployment.command("show")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@query_option
@output_option
@pass_studio
def deployment_show(
    studio: Studio, name: str, endpoint_name: str, query: str | None, fmt: str
) -> None:
    """One deployment: its state (and Azure's code and the reason when it failed)."""
    found = studio.request("GET", _deployment_path(studio, endpoint_name, name)).json()
    _emit(found, fmt, [*DEPLOYMENT_COLUMNS, "error_code", "reason"], query)


@online_deployment.command("list")
@click.option("-e", "--endpoint-name", required=True)
@output_option
@pass_studio
def deployment_list(studio: Studio, endpoint_name: str, fmt: str) -> None:
    """An endpoint's deployments."""
    emit(
        studio.request("GET", _deployment_path(studio, endpoint_name)).json(),
        fmt,
        DEPLOYMENT_COLUMNS,
    )


@online_deployment.command("delete")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@click.option("--yes", is_flag=True, help="Do not ask (as az's --yes; kstudio never asks).")
@pass_studio
def deployment_delete(studio: Studio, name: str, endpoint_name: str, yes: bool) -> None:
    """Delete a deployment (refused while it takes live traffic)."""
    studio.request("DELETE", _deployment_path(studio, endpoint_name, name))
    click.echo(f"Deleting deployment {name}.")


@online_deployment.command("get-logs")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@click.option("-l", "--lines", type=int, default=100, show_default=True)
@click.option(
    "--container",
    type=click.Choice(["inference-server", "storage-initializer"]),
    default="inference-server",
    help="The model server's log, or its preparation's (the environment build).",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Every instance's lines of the container, live, each with the instance that "
    "wrote it (until interrupted).",
)
@pass_studio
def deployment_logs(
    studio: Studio, name: str, endpoint_name: str, lines: int, container: str, follow: bool
) -> None:
    """The last lines of the model server's log (of its first instance), or, with
    --follow, every instance's lines as they come."""
    path = _deployment_path(studio, endpoint_name, name) + "logs/"
    if not follow:
        params = {"lines": lines, "container": container}
        click.echo(studio.request("GET", path, params=params).text, nl=False)
        return
    studio.request("GET", _deployment_path(studio, endpoint_name, name))  # a wrong name, said
    socket = (
        f"/ws/workspaces/{studio.workspace}/online-endpoints/{endpoint_name}"
        f"/deployments/{name}/logs/"
    )
    _follow(studio, socket, container)


def _follow(studio: Studio, socket: str, container: str) -> None:
    """A deployment's log socket, printed (it has no end: until interrupted)."""

    def show(message: dict[str, Any]) -> None:
        if message["container"] == container:
            click.echo(f"[{message['instance']}] {message['line']}")

    follow_socket(studio, socket, show)
