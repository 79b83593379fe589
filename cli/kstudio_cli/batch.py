"""`kstudio batch-endpoint ...` and `kstudio batch-deployment ...`, as Azure's batch
example scripts use `az ml batch-endpoint` / `batch-deployment`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kstudio_cli import (
    Studio,
    _archive_folder,
    _load,
    _stream,
    emit,
    fail,
    main,
    output_option,
    pass_studio,
)
from kstudio_cli.assets import _is_local
from kstudio_cli.endpoints import _emit, query_option, send_deployment

ENDPOINT_COLUMNS = ["name", "defaults", "deployments", "scoring_uri"]
DEPLOYMENT_COLUMNS = ["name", "endpoint_name", "model", "compute", "is_default"]
JOB_COLUMNS = ["name", "display_name", "status", "progress", "compute"]


def _endpoint_path(studio: Studio, name: str = "") -> str:
    return f"/workspaces/{studio.workspace}/batch-endpoints/" + (f"{name}/" if name else "")


def _deployment_path(studio: Studio, endpoint: str, name: str = "") -> str:
    return _endpoint_path(studio, endpoint) + "deployments/" + (f"{name}/" if name else "")


def _progress(jobs: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """A job's progress as one cell of a table: 3 done, 1 failed, 6 left."""
    if fmt == "json":
        return jobs
    for job in jobs:
        found = job.get("progress")
        if isinstance(found, dict):
            job["progress"] = ", ".join(f"{v} {k}" for k, v in found.items())
    return jobs


# -- endpoints -------------------------------------------------------------------------------
@main.group("batch-endpoint")
def batch_endpoint() -> None:
    """Batch endpoints: a name to invoke; each invocation is a job scoring a folder of files."""


def _send_endpoint(
    studio: Studio, file_: str | None, name: str | None, sets: tuple[str, ...], method: str
) -> dict[str, Any]:
    extra = (*sets, f"name={name}") if name else sets
    if file_:
        _data, text, _base = _load(file_, extra)
    else:
        text = yaml.safe_dump({k: v for k, _, v in (s.partition("=") for s in extra)})
    path = _endpoint_path(studio, name if method == "PUT" and name else "")
    return dict(studio.request(method, path, json={"yaml": text}).json())


@batch_endpoint.command("create")
@click.option("-f", "--file", "file_", help="The endpoint's YAML file.")
@click.option("-n", "--name", help="The endpoint's name (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set description=...")
@output_option
@pass_studio
def endpoint_create(
    studio: Studio, file_: str | None, name: str | None, sets: tuple[str, ...], fmt: str
) -> None:
    """Create a batch endpoint (its deployments come with batch-deployment create)."""
    emit(_send_endpoint(studio, file_, name, sets, "POST"), fmt, ENDPOINT_COLUMNS)


@batch_endpoint.command("update")
@click.option("-n", "--name", required=True)
@click.option("-f", "--file", "file_", help="The endpoint's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field: --set defaults.deployment_name=d")
@output_option
@pass_studio
def endpoint_update(
    studio: Studio, name: str, file_: str | None, sets: tuple[str, ...], fmt: str
) -> None:
    """Update a batch endpoint: its description, tags, default deployment."""
    if not file_:
        current = studio.request("GET", _endpoint_path(studio, name)).json()
        document = {k: current[k] for k in ("name", "description", "tags", "properties")}
        document["defaults"] = current["defaults"]
        for item in sets:
            key, _, value = item.partition("=")
            if key.startswith("defaults."):
                document["defaults"][key.removeprefix("defaults.")] = value
            else:
                document[key] = value
        text = yaml.safe_dump(document)
        shown = studio.request("PUT", _endpoint_path(studio, name), json={"yaml": text}).json()
    else:
        shown = _send_endpoint(studio, file_, name, sets, "PUT")
    emit(shown, fmt, ENDPOINT_COLUMNS)


@batch_endpoint.command("show")
@click.option("-n", "--name", required=True)
@query_option
@output_option
@pass_studio
def endpoint_show(studio: Studio, name: str, query: str | None, fmt: str) -> None:
    """One batch endpoint: its deployments and default."""
    _emit(studio.request("GET", _endpoint_path(studio, name)).json(), fmt, ENDPOINT_COLUMNS, query)


@batch_endpoint.command("list")
@output_option
@pass_studio
def endpoint_list(studio: Studio, fmt: str) -> None:
    """The workspace's batch endpoints."""
    emit(studio.request("GET", _endpoint_path(studio)).json(), fmt, ENDPOINT_COLUMNS)


@batch_endpoint.command("delete")
@click.option("-n", "--name", required=True)
@click.option("--yes", is_flag=True, help="Do not ask (as az's --yes; kstudio never asks).")
@pass_studio
def endpoint_delete(studio: Studio, name: str, yes: bool) -> None:
    """Delete a batch endpoint and its deployments (its jobs stay in the job list)."""
    studio.request("DELETE", _endpoint_path(studio, name))
    click.echo(f"Deleted batch endpoint {name}.")


@batch_endpoint.command("invoke")
@click.option("-n", "--name", required=True)
@click.option("--input", "input_", required=True, help="A local file or folder, or a URI.")
@click.option(
    "--input-type",
    type=click.Choice(["uri_folder", "uri_file"]),
    help="What the input is (found from a local path; uri_folder for a URI).",
)
@click.option("-d", "--deployment-name", help="Score with this deployment, not the default.")
@click.option("--output-path", help="Where the results go: azureml://datastores/<ds>/paths/...")
@click.option("--mini-batch-size", type=int, help="Files per mini-batch, for this job.")
@click.option("--instance-count", type=int, help="Instances, for this job.")
@click.option("--set", "sets", multiple=True, help="--set output_file_name=scores.csv")
@click.option("--stream", is_flag=True, help="Follow the job's log until it ends.")
@output_option
@pass_studio
def endpoint_invoke(
    studio: Studio,
    name: str,
    input_: str,
    input_type: str | None,
    deployment_name: str | None,
    output_path: str | None,
    mini_batch_size: int | None,
    instance_count: int | None,
    sets: tuple[str, ...],
    stream: bool,
    fmt: str,
) -> None:
    """Start a job scoring the input's files (local ones are uploaded)."""
    fields: dict[str, Any] = {
        "deployment_name": deployment_name,
        "output_path": output_path,
        "mini_batch_size": mini_batch_size,
        "instance_count": instance_count,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    for item in sets:
        if "=" not in item:
            fail(f"--set takes key=value, not {item!r}", 2)
    path = _endpoint_path(studio, name) + "invoke/"
    if _is_local(input_):
        local = Path(input_).expanduser().resolve()
        if not local.exists():
            fail(f"--input: {local} does not exist", 2)
        kind = input_type or ("uri_file" if local.is_file() else "uri_folder")
        upload = (
            (local.name, local.open("rb"))
            if kind == "uri_file"
            else (f"{local.name}.tar.gz", _archive_folder(local))
        )
        form = {**{k: str(v) for k, v in fields.items()}, "input_type": kind, "set": list(sets)}
        job = studio.request("POST", path, data=form, files={"input": upload}).json()
    else:
        body = {
            **fields,
            "input": input_,
            "input_type": input_type or "uri_folder",
            "set": dict(s.partition("=")[::2] for s in sets),
        }
        job = studio.request("POST", path, json=body).json()
    if stream:
        click.echo(f"Job {job['name']} started: {job['services']['Studio']['endpoint']}", err=True)
        sys.exit(_stream(studio, job["name"]))
    emit(_progress([job], fmt)[0], fmt, JOB_COLUMNS)


@batch_endpoint.command("list-jobs")
@click.option("-n", "--name", required=True)
@output_option
@pass_studio
def endpoint_jobs(studio: Studio, name: str, fmt: str) -> None:
    """The jobs the endpoint started, newest first, with their progress."""
    jobs = studio.request("GET", _endpoint_path(studio, name) + "jobs/").json()
    emit(_progress(jobs, fmt), fmt, JOB_COLUMNS)


# -- deployments -----------------------------------------------------------------------------
@main.group("batch-deployment")
def batch_deployment() -> None:
    """A batch endpoint's deployments: a model, its scoring script, environment and compute."""


def _send_deployment(
    studio: Studio,
    file_: str,
    sets: tuple[str, ...],
    name: str | None,
    endpoint: str | None,
    method: str,
    set_default: bool,
) -> dict[str, Any]:
    params = {"set_default": "true"} if set_default else {}
    return send_deployment(studio, file_, sets, (name, endpoint), method, _deployment_path, params)


@batch_deployment.command("create")
@click.option("-f", "--file", "file_", required=True, help="The deployment's YAML file.")
@click.option("-n", "--name", help="The deployment's name (overrides the YAML).")
@click.option("-e", "--endpoint-name", help="Its endpoint (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set settings.mini_batch_size=5")
@click.option("--set-default", is_flag=True, help="Make it the endpoint's default deployment.")
@output_option
@pass_studio
def deployment_create(
    studio: Studio,
    file_: str,
    name: str | None,
    endpoint_name: str | None,
    sets: tuple[str, ...],
    set_default: bool,
    fmt: str,
) -> None:
    """Create a batch deployment (the code folder and a local model are uploaded)."""
    shown = _send_deployment(studio, file_, sets, name, endpoint_name, "POST", set_default)
    emit(shown, fmt, DEPLOYMENT_COLUMNS)


@batch_deployment.command("update")
@click.option("-f", "--file", "file_", required=True, help="The deployment's YAML file.")
@click.option("-n", "--name", help="The deployment's name (overrides the YAML).")
@click.option("-e", "--endpoint-name", help="Its endpoint (overrides the YAML).")
@click.option("--set", "sets", multiple=True, help="Set a field: --set settings.mini_batch_size=5")
@click.option("--set-default", is_flag=True, help="Make it the endpoint's default deployment.")
@output_option
@pass_studio
def deployment_update(
    studio: Studio,
    file_: str,
    name: str | None,
    endpoint_name: str | None,
    sets: tuple[str, ...],
    set_default: bool,
    fmt: str,
) -> None:
    """Update a batch deployment (jobs already started keep what they started with)."""
    shown = _send_deployment(studio, file_, sets, name, endpoint_name, "PUT", set_default)
    emit(shown, fmt, DEPLOYMENT_COLUMNS)


@batch_deployment.command("show")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@query_option
@output_option
@pass_studio
def deployment_show(
    studio: Studio, name: str, endpoint_name: str, query: str | None, fmt: str
) -> None:
    """One batch deployment: its model, compute and settings."""
    found = studio.request("GET", _deployment_path(studio, endpoint_name, name)).json()
    _emit(found, fmt, DEPLOYMENT_COLUMNS, query)


@batch_deployment.command("list")
@click.option("-e", "--endpoint-name", required=True)
@output_option
@pass_studio
def deployment_list(studio: Studio, endpoint_name: str, fmt: str) -> None:
    """A batch endpoint's deployments."""
    found = studio.request("GET", _deployment_path(studio, endpoint_name)).json()
    emit(found, fmt, DEPLOYMENT_COLUMNS)


@batch_deployment.command("delete")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@click.option("--yes", is_flag=True, help="Do not ask (as az's --yes; kstudio never asks).")
@pass_studio
def deployment_delete(studio: Studio, name: str, endpoint_name: str, yes: bool) -> None:
    """Delete a batch deployment (not the default while the endpoint has others)."""
    studio.request("DELETE", _deployment_path(studio, endpoint_name, name))
    click.echo(f"Deleted batch deployment {name}.")


@batch_deployment.command("list-jobs")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", required=True)
@output_option
@pass_studio
def deployment_jobs(studio: Studio, name: str, endpoint_name: str, fmt: str) -> None:
    """The jobs this deployment ran, newest first."""
    jobs = studio.request("GET", _deployment_path(studio, endpoint_name, name) + "jobs/").json()
    emit(_progress(jobs, fmt), fmt, JOB_COLUMNS)
