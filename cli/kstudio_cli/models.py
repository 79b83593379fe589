"""`kstudio model ...`: a workspace's models, as `az ml model` manages them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kstudio_cli import (
    Studio,
    _archive_folder,
    _load,
    download_zip,
    emit,
    fail,
    main,
    output_option,
    pass_studio,
)
from kstudio_cli.assets import _is_local, _version_of

MODEL_COLUMNS = ["name", "version", "type", "size", "file_count", "job", "created_at"]


@main.group()
def model() -> None:
    """Models: named, versioned model files, from uploads, jobs and MLflow runs."""


@model.command("create")
@click.option("-f", "--file", "file_", help="The model's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field: --set description=...")
@click.option("--name", help="The model's name (overrides the YAML).")
@click.option("--version", help="The version (default: the next number).")
@click.option(
    "--path",
    "path_",
    help="Its files (overrides the YAML): a local file or folder, "
    "azureml://jobs/<job>/outputs/<output>, runs:/<run id>/<path> or azureml://datastores/...",
)
@click.option("--type", "type_", help="custom_model (default), mlflow_model or triton_model.")
@output_option
@pass_studio
def model_create(
    studio: Studio,
    file_: str | None,
    sets: tuple[str, ...],
    name: str | None,
    version: str | None,
    path_: str | None,
    type_: str | None,
    fmt: str,
) -> None:
    """Register a model version; a local file or folder is uploaded to the workspace's
    default datastore."""
    extra = [
        f"{key}={value}"
        for key, value in (("name", name), ("version", version), ("path", path_), ("type", type_))
        if value
    ]
    if file_:
        document, text, base = _load(file_, (*sets, *extra))
    else:
        document = dict(item.split("=", 1) for item in (*sets, *extra) if "=" in item)
        text, base = "", Path.cwd()
    url = f"/workspaces/{studio.workspace}/models/"
    target = str(document.get("path") or "")
    body = {"spec": text} if text else {"spec": _yaml(document)}
    if not target or not _is_local(target) or target.startswith(("runs:/", "models:/")):
        emit(studio.request("POST", url, json={"yaml": body["spec"]}).json(), fmt, MODEL_COLUMNS)
        return
    local = (base / target).resolve()
    files: dict[str, Any]
    if local.is_file():
        files = {"file": (local.name, local.open("rb"))}
    elif local.is_dir():
        files = {"folder": (f"{local.name}.tar.gz", _archive_folder(local))}
    else:
        studio.request("POST", url, json={"yaml": body["spec"]},
                       local_errors=[("path", f"{local} does not exist")])  # fmt: skip
        return
    emit(studio.request("POST", url, data=body, files=files).json(), fmt, MODEL_COLUMNS)


def _yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document)


@model.command("list")
@click.option("--name", help="Every version of this model (default: each model's latest).")
@output_option
@pass_studio
def model_list(studio: Studio, name: str | None, fmt: str) -> None:
    """The workspace's models."""
    url = f"/workspaces/{studio.workspace}/models/" + (f"{name}/" if name else "")
    columns = MODEL_COLUMNS if name else ["name", "version", "versions", "type", "job"]
    emit(studio.request("GET", url).json(), fmt, columns)


@model.command("show")
@click.argument("reference")
@click.option("--version", help="The version (default: the latest).")
@output_option
@pass_studio
def model_show(studio: Studio, reference: str, version: str | None, fmt: str) -> None:
    """One version: NAME, NAME@VERSION, NAME:VERSION (NAME@latest: the newest)."""
    found = _version_of(studio, "models", _colon(reference), version)
    emit(found, fmt, [*MODEL_COLUMNS, "path", "registered_from", "run_id", "description"])


def _colon(reference: str) -> str:
    """NAME@VERSION as NAME:VERSION (but NAME@latest, which the lookup reads as is)."""
    name, at, version = reference.partition("@")
    return f"{name}:{version}" if at and version != "latest" else reference


@model.command("download")
@click.argument("reference")
@click.option("--version", help="The version (default: the latest).")
@click.option("--download-path", "-p", default=".", show_default=True, type=click.Path())
@pass_studio
def model_download(studio: Studio, reference: str, version: str | None, download_path: str) -> None:
    """Download a model version's files into <download-path>/<name>/, as `az ml model
    download` does."""
    found = _version_of(studio, "models", _colon(reference), version)
    target = Path(download_path) / found["name"]
    path = f"/workspaces/{studio.workspace}/models/{found['name']}/versions/{found['version']}/"
    count = download_zip(studio, path + "download/", target)
    if not count:
        fail(f"{found['name']}:{found['version']} has no files")
    click.echo(f"Downloaded {count} file(s) of {found['name']}:{found['version']} to {target}")
