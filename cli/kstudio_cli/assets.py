"""`kstudio datastore ...` and `kstudio data ...`: a workspace's datastores and data assets."""

from __future__ import annotations

import re
from typing import Any

import click

from kstudio_cli import (
    Studio,
    _archive_folder,
    _load,
    emit,
    fail,
    main,
    output_option,
    pass_studio,
)

DATASTORE_COLUMNS = ["name", "type", "description", "credentials", "is_default"]
DATA_COLUMNS = ["name", "version", "type", "path", "size", "file_count", "created_at"]


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("azureml:")


# -- datastores ------------------------------------------------------------------------------
@main.group()
def datastore() -> None:
    """Where a workspace's data lives (Azure blob, S3-compatible, a host folder)."""


@datastore.command("create")
@click.option("-f", "--file", required=True, help="The datastore's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field: --set description=...")
@click.option("--name", help="The datastore's name (overrides the YAML).")
@output_option
@pass_studio
def datastore_create(
    studio: Studio, file: str, sets: tuple[str, ...], name: str | None, fmt: str
) -> None:
    """Create a datastore, or update the one of that name (as `az ml datastore create`).
    The studio checks that it can read the storage before keeping it."""
    if name:
        sets = (*sets, f"name={name}")
    data, text, _base = _load(file, sets)
    if not isinstance(data.get("name"), str) or not data["name"]:
        fail("name: is required (in the file or with --name)", 2)
    path = f"/workspaces/{studio.workspace}/datastores/{data['name']}/"
    emit(studio.request("PUT", path, json={"yaml": text}).json(), fmt, DATASTORE_COLUMNS)


@datastore.command("list")
@output_option
@pass_studio
def datastore_list(studio: Studio, fmt: str) -> None:
    """The workspace's datastores (credentials are never shown)."""
    found = studio.request("GET", f"/workspaces/{studio.workspace}/datastores/").json()
    emit(found, fmt, DATASTORE_COLUMNS)


@datastore.command("show")
@click.argument("name")
@output_option
@pass_studio
def datastore_show(studio: Studio, name: str, fmt: str) -> None:
    """One datastore: where it points, which credentials it holds (not their values)."""
    found = studio.request("GET", f"/workspaces/{studio.workspace}/datastores/{name}/").json()
    emit(found, fmt, DATASTORE_COLUMNS)


@datastore.command("delete")
@click.argument("name")
@pass_studio
def datastore_delete(studio: Studio, name: str) -> None:
    """Delete a datastore (refused while data assets live in it, or for the default)."""
    studio.request("DELETE", f"/workspaces/{studio.workspace}/datastores/{name}/")
    click.echo(f"Deleted datastore {name}.")


# -- data assets -----------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Data assets: named, versioned files and folders."""


@data.command("create")
@click.option("-f", "--file", required=True, help="The data asset's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field: --set version=2")
@click.option("--name", help="The asset's name (overrides the YAML).")
@click.option("--version", help="The version (default: the next number).")
@click.option("--path", "path_", help="Its path (overrides the YAML): local, a URL or azureml://.")
@output_option
@pass_studio
def data_create(
    studio: Studio,
    file: str,
    sets: tuple[str, ...],
    name: str | None,
    version: str | None,
    path_: str | None,
    fmt: str,
) -> None:
    """Register a data asset version; a local file or folder is uploaded to the
    workspace's default datastore (or the one `datastore:` names)."""
    extra = [f"{key}={value}" for key, value in (("name", name), ("version", version),
             ("path", path_)) if value]  # fmt: skip
    document, text, base = _load(file, (*sets, *extra))
    url = f"/workspaces/{studio.workspace}/data/"
    target = str(document.get("path") or "")
    if not target or not _is_local(target):
        emit(studio.request("POST", url, json={"yaml": text}).json(), fmt, DATA_COLUMNS)
        return
    local = (base / target).resolve()
    files: dict[str, Any]
    if not local.exists():
        studio.request("POST", url, json={"yaml": text}, local_errors=[
            ("path", f"{local} does not exist")])  # fmt: skip
    kind = document.get("type", "uri_folder")
    if kind == "uri_file":
        if not local.is_file():
            fail(f"path: {local} is not a file; type uri_file needs one", 2)
        files = {"file": (local.name, local.open("rb"))}
    else:
        if not local.is_dir():
            fail(f"path: {local} is not a folder; type {kind} needs one", 2)
        files = {"file": (f"{local.name}.tar.gz", _archive_folder(local))}
    made = studio.request("POST", url, data={"spec": text}, files=files).json()
    emit(made, fmt, DATA_COLUMNS)


def _name_and_version(reference: str) -> tuple[str, str | None]:
    """NAME, NAME@latest, NAME:VERSION (an azureml: prefix is allowed)."""
    reference = reference.removeprefix("azureml:")
    match = re.match(r"^([^:@]+)(?:@latest|:([^:@]+))?$", reference)
    if not match:
        fail(f"{reference!r}: use NAME, NAME@latest or NAME:VERSION", 2)
    return match.group(1), match.group(2)


@data.command("list")
@click.option("--name", help="Every version of this asset (default: each asset's latest).")
@output_option
@pass_studio
def data_list(studio: Studio, name: str | None, fmt: str) -> None:
    """The workspace's data assets."""
    url = f"/workspaces/{studio.workspace}/data/" + (f"{name}/" if name else "")
    columns = DATA_COLUMNS if name else ["name", "version", "versions", "type", "path"]
    emit(studio.request("GET", url).json(), fmt, columns)


@data.command("show")
@click.argument("reference")
@click.option("--version", help="The version (default: the latest).")
@output_option
@pass_studio
def data_show(studio: Studio, reference: str, version: str | None, fmt: str) -> None:
    """One version of a data asset: NAME, NAME@latest or NAME:VERSION."""
    name, named_version = _name_and_version(reference)
    chosen = version or named_version or "latest"
    url = f"/workspaces/{studio.workspace}/data/{name}/versions/{chosen}/"
    emit(studio.request("GET", url).json(), fmt, [*DATA_COLUMNS, "description"])
