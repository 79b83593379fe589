"""Datastores and data assets: creating them (checked against the storage before anything
is kept), and finding the files a reference names, for jobs and pages alike."""

from __future__ import annotations

import json
import os
import socket
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from compute.launcher import archive_problem
from data import network, spec
from data.models import DEFAULT_DATASTORE, DataAsset, Datastore, DatastoreKind
from data.stores import File, StoreError, account_url, open_store
from studio import assets
from studio.access import is_it_ops
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace

# Azure's public clouds: a storage URL outside any datastore is read anonymously only there.
AZURE_CLOUDS = {
    "core.windows.net",
    "core.chinacloudapi.cn",
    "core.usgovcloudapi.net",
    "core.cloudapi.de",
}
# How long a signed URL handed to a job reads its file: a week, S3's longest.
SIGNED_URL_SECONDS = 7 * 24 * 3600


class InUse(Conflict):
    """Refused: data assets still live in the datastore, or it is the default."""


# -- datastores ------------------------------------------------------------------------------
def seed_default(workspace: Workspace) -> Datastore:
    """Every workspace has `workspaceblobstore`: a folder under the studio's data folder
    until IT-ops points it at real storage."""
    datastore, _ = Datastore.objects.get_or_create(
        workspace=workspace,
        name=DEFAULT_DATASTORE,
        defaults={
            "kind": DatastoreKind.LOCAL,
            "location": {"path": str(Path(settings.STUDIO_DATASTORES_DIR) / str(workspace.pk))},
            "description": "The workspace's default datastore.",
            "is_default": True,
        },
    )
    return datastore


def default_datastore(workspace: Workspace) -> Datastore:
    return Datastore.objects.filter(workspace=workspace, is_default=True).first() or seed_default(
        workspace
    )


def _private_endpoint(url: str) -> str | None:
    """The address an endpoint URL resolves to when it is not public, else None."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None  # unresolvable: the check against the storage says so
    for info in infos:
        if not network.is_public(address := str(info[4][0])):
            return address.split("%")[0]
    return None


def save_datastore(workspace: Workspace, user: Any, data: dict[str, Any]) -> Datastore:
    """Create a datastore, or replace the one of that name (Azure's create-or-update).
    The storage is asked first: a datastore that cannot be read is not kept. Omitted
    credentials on an update of the same kind keep the stored ones."""
    document = spec.parse_datastore(data)
    kind = document.type
    if isinstance(document, spec.LocalDatastore) and not is_it_ops(user):
        raise PermissionDenied("Only IT-ops may make a datastore of a folder on the studio host.")
    endpoint_field, endpoint = _endpoint(document)
    if endpoint and not is_it_ops(user) and (address := _private_endpoint(endpoint)):
        raise FieldErrors(
            [(endpoint_field, f"resolves to {address}, not a public address: only IT-ops may "
              "use a storage endpoint inside the studio's network")]
        )  # fmt: skip
    location = document.model_dump(
        exclude={"schema_", "name", "description", "tags", "type", "credentials"},
        exclude_none=True,
    )
    existing = Datastore.objects.filter(workspace=workspace, name=document.name).first()
    given = getattr(document, "credentials", None)
    credentials: dict[str, str] = given.model_dump(exclude_none=True) if given else {}
    if not credentials and existing is not None and existing.kind == kind:
        credentials = json.loads(existing.credentials) if existing.credentials else {}
    datastore = existing or Datastore(workspace=workspace, name=document.name)
    datastore.kind = kind
    datastore.description = document.description
    datastore.location = location
    datastore.credentials = json.dumps(credentials) if credentials else ""
    datastore.credentials_kind = "+".join(sorted(credentials))
    datastore.inward = is_it_ops(user)  # anyone else's reaches public addresses only
    try:
        open_store(datastore).check()
    except StoreError as exc:
        raise FieldErrors([(exc.field or _location_field(kind), str(exc))]) from exc
    datastore.is_default = (
        datastore.is_default
        or not Datastore.objects.filter(workspace=workspace, is_default=True)
        .exclude(pk=datastore.pk)
        .exists()
    )
    datastore.save()
    return datastore


def _endpoint(document: spec.DatastoreDocument) -> tuple[str, str]:
    """The field that says where the storage answers, and the URL the studio will call."""
    if isinstance(document, spec.S3Datastore):
        return "endpoint_url", document.endpoint_url or ""
    if isinstance(document, spec.AzureBlobDatastore):
        field = "account_url" if document.account_url else "endpoint"
        return field, account_url(document.model_dump(exclude_none=True))
    return "", ""


def _location_field(kind: str) -> str:
    return {"s3": "bucket", "azure_blob": "container_name", "local": "path"}[kind]


def delete_datastore(datastore: Datastore) -> None:
    if datastore.is_default:
        raise InUse(
            f"{datastore.name} is the workspace's default datastore; point it elsewhere "
            "instead of deleting it."
        )
    held = DataAsset.objects.filter(
        workspace=datastore.workspace, path__startswith=spec.datastore_uri(datastore.name, "")
    ).order_by("name", "version")
    names = [str(asset) for asset in held[:10]]
    if names:
        raise InUse(f"Datastore {datastore.name!r} holds data assets: {', '.join(names)}.")
    datastore.delete()


def described(datastore: Datastore) -> dict[str, Any]:
    """What the API and pages show: everything but the secrets."""
    return {
        "name": datastore.name,
        "type": datastore.kind,
        "description": datastore.description,
        **datastore.location,
        "credentials": datastore.credentials_kind.split("+") if datastore.credentials_kind else [],
        "is_default": datastore.is_default,
        "created_at": datastore.created_at,
        "updated_at": datastore.updated_at,
    }


# -- where a reference's files are -----------------------------------------------------------
@dataclass
class Location:
    """Files a reference names: a path in a datastore (maybe an ad-hoc public container),
    or a plain http(s) URL."""

    uri: str  # canonical: azureml://datastores/..., a storage URL, or http(s)
    datastore: Datastore | None = None
    path: str = ""
    asset: DataAsset | None = None
    url: str = ""  # http(s) only

    def walk(self) -> list[File]:
        assert self.datastore is not None
        limit = settings.STUDIO_MAX_ARCHIVE_MEMBERS
        return open_store(self.datastore).walk(self.path, limit)


def locate(workspace: Workspace, uri: str) -> Location | None:
    """Where `uri` points in this workspace; None for a local path. Raises ValueError with
    the reason a user should read (no such data asset, datastore, ...)."""
    ref = spec.parse_ref(uri)
    if ref is None:
        if uri.lower().startswith(("http://", "https://")):
            return Location(uri=uri, url=uri)
        return None
    if isinstance(ref, spec.AssetRef):
        asset = assets.find(DataAsset, workspace, ref.name, ref.version)
        location = locate(workspace, asset.path)
        assert location is not None  # an asset's path is never a local one
        location.asset = asset
        return location
    if isinstance(ref, spec.DatastoreRef):
        datastore = Datastore.objects.filter(workspace=workspace, name=ref.datastore).first()
        if datastore is None:
            raise ValueError(f"no datastore named {ref.datastore!r} in this workspace")
        return Location(uri=spec.datastore_uri(ref.datastore, ref.path), datastore=datastore,
                        path=ref.path)  # fmt: skip
    return Location(uri=uri, datastore=_storage_datastore(workspace, ref), path=ref.path)


def _storage_datastore(workspace: Workspace, ref: spec.StorageRef) -> Datastore:
    """The workspace's datastore for a storage URL's bucket or container (its endpoint and
    credentials), or, for Azure, the public container itself."""
    found = Datastore.objects.filter(workspace=workspace, kind=ref.kind)
    if ref.kind == DatastoreKind.S3:
        datastore = found.filter(location__bucket=ref.container).first()
        if datastore is None:
            raise ValueError(
                f"no s3 datastore in this workspace has the bucket {ref.container!r}; "
                "create one (kstudio datastore create) so the studio knows its endpoint "
                "and credentials"
            )
        return datastore
    datastore = found.filter(
        location__account_name=ref.account, location__container_name=ref.container
    ).first()
    if datastore is None and ref.endpoint not in AZURE_CLOUDS:
        # Read anonymously only from Azure itself: any other host is one a user chose.
        raise ValueError(
            f"no azure_blob datastore in this workspace has the account {ref.account!r} and "
            f"container {ref.container!r}; public containers are read from Azure's own "
            "endpoints only"
        )
    return datastore or Datastore(
        workspace=workspace,
        name="",
        kind=DatastoreKind.AZURE_BLOB,
        location={
            "account_name": ref.account,
            "container_name": ref.container,
            "endpoint": ref.endpoint,
        },
    )


def volume_of(location: Location) -> dict[str, Any] | None:
    """How pods mount a host-folder datastore's storage ({"volume": a Kubernetes volume
    source, "root": the folder on the studio host}), if IT-ops said so."""
    datastore = location.datastore
    if datastore is None or datastore.kind != DatastoreKind.LOCAL:
        return None
    volume = datastore.location.get("volume")
    return {"volume": volume, "root": datastore.location["path"]} if volume else None


def files_of(location: Location, kind: str) -> tuple[list[dict[str, Any]], str]:
    """The files a job's input gets, each {"path": relative, "size"} with how to read it:
    "url" (signed, read straight from the storage) or "source" (a file on the studio
    host); and the folder or file name they sit under. Raises ValueError when there is
    nothing, or not what the input's type says."""
    if location.url:
        return [], ""
    try:
        found = location.walk()
    except StoreError as exc:
        raise ValueError(f"{location.uri}: {exc}") from exc
    if not found:
        raise ValueError(f"{location.uri}: no such file or folder")
    exact = len(found) == 1 and found[0].path == location.path.strip("/")
    if kind == "uri_file" and not exact:
        raise ValueError(f"{location.uri} is a folder; the input's type is uri_file")
    assert location.datastore is not None
    store = open_store(location.datastore)
    base = location.path.strip("/")
    entries = []
    for file in found:
        relative = PurePosixPath(file.path).name if exact else file.path[len(base) :].lstrip("/")
        url = store.signed_url(file.path, SIGNED_URL_SECONDS)
        how = {"url": url} if url else {"source": store.native_url(file.path)}
        entries.append({"path": relative, "size": file.size, **how})
    return entries, PurePosixPath(base).name


def native_url(location: Location) -> str:
    """What a job gets for mode `direct`: the storage's own name for the path."""
    if location.url or location.datastore is None:
        return location.url or location.uri
    return open_store(location.datastore).native_url(location.path)


# -- data assets -----------------------------------------------------------------------------
def create_asset(
    workspace: Workspace, user: Any, data: dict[str, Any], upload: IO[bytes] | None = None,
    filename: str = "",
) -> DataAsset:  # fmt: skip
    """Register a data asset version. A local path comes as `upload` (the file, or a
    folder as a .tar.gz) and is kept in the datastore named, by default the workspace's
    default, under LocalUpload/<id>/ as Azure does."""
    document = spec.parse_data(data)
    version = assets.new_version(DataAsset, workspace, document.name, document.version)
    try:
        location = locate(workspace, document.path)
    except ValueError as exc:
        raise FieldErrors([("path", str(exc))]) from exc
    if location is not None and location.asset is not None:
        raise FieldErrors([("path", "must be a path or URL, not another data asset")])
    if location is None:
        if upload is None:
            raise FieldErrors(
                [("path", "a local path is uploaded with the asset (kstudio data create "
                  "sends it); none came with this request")]
            )  # fmt: skip
        location = _upload(workspace, document, upload, filename)
    size = count = None
    if location.datastore is not None:
        try:
            found = location.walk()
        except StoreError as exc:
            raise FieldErrors([("path", f"{location.uri}: {exc}")]) from exc
        _check_type(document.type, location, found)
        size, count = sum(f.size for f in found), len(found)
    try:
        with transaction.atomic():
            return DataAsset.objects.create(
                workspace=workspace, name=document.name, version=version, type=document.type,
                path=location.uri, description=document.description, tags=document.tags,
                size=size, file_count=count, created_by=user if user.is_authenticated else None,
            )  # fmt: skip
    except IntegrityError as exc:
        raise Conflict(
            f"Data asset {document.name}:{version} was just made by another request."
        ) from exc


def _check_type(kind: str, location: Location, found: list[File]) -> None:
    base = location.path.strip("/")
    if not found:
        raise FieldErrors([("path", f"{location.uri}: no such file or folder")])
    is_file = len(found) == 1 and found[0].path == base
    if kind == "uri_file" and not is_file:
        raise FieldErrors([("path", f"{location.uri} is a folder; type uri_file needs a file")])
    if kind != "uri_file" and is_file:
        raise FieldErrors([("path", f"{location.uri} is a file; type {kind} needs a folder")])
    if kind == "mltable" and not any(f.path == f"{base}/MLTable".lstrip("/") for f in found):
        raise FieldErrors([("path", f"{location.uri} has no MLTable file; type mltable needs one")])


def _upload(
    workspace: Workspace, document: spec.DataDocument, upload: IO[bytes], filename: str
) -> Location:
    name = PurePosixPath(document.path.rstrip("/")).name or document.name
    return upload_path(
        workspace, document.datastore, name, upload, is_file=document.type == "uri_file"
    )


def upload_path(
    workspace: Workspace, datastore_name: str | None, name: str, upload: IO[bytes], *,
    is_file: bool,
) -> Location:  # fmt: skip
    """Keep an uploaded file, or a folder sent as a tar archive, in the datastore named
    (by default the workspace's) under LocalUpload/<id>/<name>, as Azure does; returns
    where it is. FieldErrors on `path` or `datastore`."""
    if datastore_name:
        datastore = Datastore.objects.filter(workspace=workspace, name=datastore_name).first()
        if datastore is None:
            raise FieldErrors([("datastore", f"no datastore named {datastore_name!r}")])
    else:
        datastore = default_datastore(workspace)
    store = open_store(datastore)
    base = f"LocalUpload/{uuid.uuid4().hex}/{name}"
    try:
        if is_file:
            store.save(base, upload)
        else:
            _save_folder(store, base, upload)
    except StoreError as exc:
        raise FieldErrors([("datastore", f"{datastore.name}: {exc}")]) from exc
    return Location(uri=spec.datastore_uri(datastore.name, base), datastore=datastore, path=base)


def _save_folder(store: Any, base: str, archive: IO[bytes]) -> None:
    problem = archive_problem(
        archive, settings.STUDIO_MAX_ARCHIVE_MEMBERS, settings.STUDIO_MAX_ARCHIVE_BYTES
    )
    if problem:
        raise FieldErrors([("path", problem)])
    with tempfile.TemporaryDirectory() as folder:
        try:
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(folder, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise FieldErrors([("path", f"the folder's archive could not be read: {exc}")]) from exc
        for dirpath, _dirs, files in os.walk(folder):
            for file in files:
                path = os.path.join(dirpath, file)
                if os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    store.save(f"{base}/{os.path.relpath(path, folder)}", f)


def register_output(
    workspace: Workspace, user: Any, name: str, version: str | None, uri: str, what: str
) -> DataAsset:
    """A job's output, delivered to `uri`, as a uri_folder data asset version (an empty
    output registers too: the job wrote nothing there, and that is what it made)."""
    location = locate(workspace, uri)
    assert location is not None and location.datastore is not None
    found = location.walk()
    version = version or assets.next_version(DataAsset, workspace, name)
    try:
        with transaction.atomic():
            return DataAsset.objects.create(
                workspace=workspace, name=name, version=version, type="uri_folder",
                path=location.uri, description=what, size=sum(f.size for f in found),
                file_count=len(found), created_by=user,
            )  # fmt: skip
    except IntegrityError as exc:
        raise Conflict(f"data asset {name}:{version} already exists") from exc
