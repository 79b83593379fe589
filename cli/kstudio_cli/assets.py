"""`kstudio datastore ...`, `kstudio data ...` and `kstudio environment ...`: a workspace's
datastores, data assets and environments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import yaml

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


def _version_of(studio: Studio, kind: str, reference: str, version: str | None) -> Any:
    """One version of an asset named NAME, NAME@latest or NAME:VERSION (an azureml: prefix
    is allowed); --version wins over the reference's."""
    match = re.match(r"^([^:@]+)(?:@latest|:([^:@]+))?$", reference.removeprefix("azureml:"))
    if not match:
        fail(f"{reference!r}: use NAME, NAME@latest or NAME:VERSION", 2)
    chosen = version or match.group(2) or "latest"
    url = f"/workspaces/{studio.workspace}/{kind}/{match.group(1)}/versions/{chosen}/"
    return studio.request("GET", url).json()


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
    emit(_version_of(studio, "data", reference, version), fmt, [*DATA_COLUMNS, "description"])


# -- environments ----------------------------------------------------------------------------
ENVIRONMENT_COLUMNS = ["name", "version", "image", "description", "created_at"]


def inline_conda_file(environment: dict[str, Any], base: Path, field: str) -> list[tuple[str, str]]:
    """`conda_file: path` -> the file's content, as the studio takes it; problems by field."""
    conda = environment.get("conda_file")
    if not isinstance(conda, str):
        return []
    path = (base / conda).resolve()
    try:
        environment["conda_file"] = yaml.safe_load(path.read_text())
    except OSError as exc:
        return [(f"{field}.conda_file", f"cannot read {path}: {exc.strerror}")]
    except yaml.YAMLError as exc:
        return [(f"{field}.conda_file", f"{path} is not valid YAML: {exc}")]
    return []


@main.group()
def environment() -> None:
    """Environments: an image, a conda file's packages, or a Docker build context."""


@environment.command("create")
@click.option("-f", "--file", required=True, help="The environment's YAML file.")
@click.option("--set", "sets", multiple=True, help="Set a field: --set version=2")
@click.option("--name", help="The environment's name (overrides the YAML).")
@click.option("--version", help="The version (default: the next number).")
@output_option
@pass_studio
def environment_create(
    studio: Studio, file: str, sets: tuple[str, ...], name: str | None, version: str | None,
    fmt: str,
) -> None:  # fmt: skip
    """Register an environment version (its conda file's content and build context go
    with it)."""
    extra = [f"{k}={v}" for k, v in (("name", name), ("version", version)) if v]
    document, _text, base = _load(file, (*sets, *extra))
    errors = inline_conda_file(document, base, "(document)")
    url = f"/workspaces/{studio.workspace}/environments/"
    build = document.get("build")
    files: dict[str, Any] = {}
    if isinstance(build, dict) and isinstance(build.get("path"), str):
        context = (base / build["path"]).resolve()
        if context.is_dir():
            files["context"] = ("context.tar.gz", _archive_folder(context))
        else:
            errors.append(("build.path", f"{context} is not a folder"))
    errors = [(field.replace("(document).", ""), message) for field, message in errors]
    text = yaml.safe_dump(document, sort_keys=False)
    if files and not errors:
        made = studio.request("POST", url, data={"spec": text}, files=files).json()
    else:
        made = studio.request("POST", url, json={"yaml": text}, local_errors=errors).json()
    emit(made, fmt, ENVIRONMENT_COLUMNS)


@environment.command("list")
@output_option
@pass_studio
def environment_list(studio: Studio, fmt: str) -> None:
    """The workspace's environments (each one's latest version)."""
    found = studio.request("GET", f"/workspaces/{studio.workspace}/environments/").json()
    emit(found, fmt, ["name", "version", "versions", "image"])


@environment.command("show")
@click.argument("reference")
@click.option("--version", help="The version (default: the latest).")
@output_option
@pass_studio
def environment_show(studio: Studio, reference: str, version: str | None, fmt: str) -> None:
    """One version of an environment: NAME, NAME@latest or NAME:VERSION."""
    shown = _version_of(studio, "environments", reference, version)
    emit(shown, fmt, [*ENVIRONMENT_COLUMNS, "conda_file"])
