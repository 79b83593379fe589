"""Datastore and data-asset documents as Azure ML's CLI v2 YAML writes them, validated,
and the references to data that jobs and assets use (`azureml:` names, datastore URIs,
storage URLs), parsed. Pure: no database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, Field, StrictStr, field_validator, model_validator
from urllib3.util import parse_url

from studio.documents import NAME_PATTERN, DocumentError, Strict, asset_version, validate

KINDS_REFUSED = {
    "azure_file": "Azure file shares are not supported; use azure_blob, s3 or local",
    "azure_data_lake_gen1": "Azure Data Lake Gen1 is not supported; use azure_blob, s3 or local",
    "azure_data_lake_gen2": (
        "Azure Data Lake Gen2 is not supported by that name; its account's blob endpoint "
        "works as type azure_blob (container_name: the file system)"
    ),
}


def storage_url(value: str) -> str:
    """A storage endpoint, http(s)://host[:port][/path], that every URL parser reads alike:
    the studio checks the host that the storage's client will connect to. A backslash or
    a user part is where parsers disagree (`http://127.0.0.1:1\\@1.1.1.1/`: urllib's host is
    1.1.1.1, the client's 127.0.0.1), so both are refused, as are spaces and controls."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c == "\\" for c in value):
        raise ValueError("must not contain spaces, control characters or backslashes")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not hold a user name or password (give credentials instead)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    try:
        parts.port  # noqa: B018 - urllib raises on a port out of range
        theirs = (parse_url(value).host or "").strip("[]").lower()
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from exc
    if theirs != parts.hostname.lower():
        raise ValueError("is read differently by different URL parsers; write it plainly")
    return value


StorageUrl = Annotated[StrictStr, AfterValidator(storage_url)]
# Azure's `endpoint` (core.windows.net): a DNS suffix, which becomes part of a URL's host.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
ENDPOINT_SUFFIX = rf"^{_LABEL}(\.{_LABEL})*(:[0-9]{{1,5}})?$"


class AzureBlobCredentials(Strict):
    account_key: StrictStr | None = None
    sas_token: StrictStr | None = None


class S3Credentials(Strict):
    access_key_id: StrictStr
    secret_access_key: StrictStr


class DatastoreBase(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}


class AzureBlobDatastore(DatastoreBase):
    type: Literal["azure_blob"]
    account_name: Annotated[StrictStr, Field(pattern=r"^[a-z0-9]{3,24}$")]
    container_name: Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")]
    endpoint: Annotated[StrictStr, Field(pattern=ENDPOINT_SUFFIX)] | None = None
    protocol: Literal["https", "http", "wasbs", "wasb"] | None = None
    # Not Azure's: the blob service's URL outright (Azurite, a proxy).
    account_url: StorageUrl | None = None
    credentials: AzureBlobCredentials | None = None

    @field_validator("credentials")
    @classmethod
    def _one(cls, value: AzureBlobCredentials | None) -> AzureBlobCredentials | None:
        if value is not None and bool(value.account_key) == bool(value.sas_token):
            raise ValueError("give account_key or sas_token (one of them)")
        return value


class S3Datastore(DatastoreBase):
    type: Literal["s3"]
    bucket: Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    # MinIO, Ceph and others; AWS when absent.
    endpoint_url: StorageUrl | None = None
    region: StrictStr | None = None
    credentials: S3Credentials | None = None


class ClaimVolume(Strict):
    claimName: Annotated[StrictStr, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class NfsVolume(Strict):
    server: StrictStr
    path: Annotated[StrictStr, Field(pattern=r"^/")]


class KubernetesVolume(Strict):
    """The same storage as pods see it, in Kubernetes' own words: a claim in the job's
    namespace, or an NFS export."""

    persistentVolumeClaim: ClaimVolume | None = None
    nfs: NfsVolume | None = None

    @model_validator(mode="after")
    def _one(self) -> KubernetesVolume:
        if (self.persistentVolumeClaim is None) == (self.nfs is None):
            raise ValueError("give persistentVolumeClaim or nfs (one of them)")
        return self


class LocalDatastore(DatastoreBase):
    type: Literal["local"]
    path: Annotated[StrictStr, Field(pattern=r"^/")]  # a folder on the studio host
    # Not Azure's: how pods of a Kubernetes compute mount the same folder (read-only).
    volume: KubernetesVolume | None = None


DatastoreDocument = AzureBlobDatastore | S3Datastore | LocalDatastore
DOCUMENTS: dict[str, type[DatastoreDocument]] = {
    "azure_blob": AzureBlobDatastore,
    "s3": S3Datastore,
    "local": LocalDatastore,
}


def parse_datastore(data: dict[str, Any]) -> DatastoreDocument:
    kind = data.get("type")
    if kind in KINDS_REFUSED:
        raise DocumentError([("type", f"not supported: {KINDS_REFUSED[kind]}")])
    if kind not in DOCUMENTS:
        choices = ", ".join(DOCUMENTS)
        message = "is required" if kind is None else f"unknown type {kind!r}"
        raise DocumentError([("type", f"{message}; use one of {choices}")])
    return validate(DOCUMENTS[kind], data)


class DataDocument(Strict):
    """Azure's data.schema.json, as far as it fits."""

    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
    version: StrictStr | int | None = None
    type: Literal["uri_file", "uri_folder", "mltable"] = "uri_folder"
    path: StrictStr
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    # Where a local path is uploaded (default: the workspace's default datastore).
    datastore: StrictStr | None = None

    _version = field_validator("version")(asset_version)

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, value: str | None) -> str | None:
        return value.removeprefix("azureml:") if value else value


def parse_data(data: dict[str, Any]) -> DataDocument:
    return validate(DataDocument, data)


# -- references to data ----------------------------------------------------------------------
@dataclass(frozen=True)
class AssetRef:
    """azureml:NAME:VERSION or azureml:NAME@latest (version None)."""

    name: str
    version: str | None


@dataclass(frozen=True)
class DatastoreRef:
    """azureml://datastores/NAME/paths/PATH (PATH may be '' for the whole datastore)."""

    datastore: str
    path: str


@dataclass(frozen=True)
class StorageRef:
    """A storage URL outside any datastore reference: s3://bucket/key,
    wasbs://container@account.blob.core.windows.net/path (abfss: the same account)."""

    kind: str  # s3 | azure_blob
    account: str  # azure_blob only
    endpoint: str  # azure_blob: core.windows.net
    container: str  # the bucket or container
    path: str


Ref = AssetRef | DatastoreRef | StorageRef

_ASSET = re.compile(r"^azureml:(?!//)([A-Za-z0-9][A-Za-z0-9_-]*)(?::([A-Za-z0-9._-]+)|@latest)$")
_DATASTORE = re.compile(r"^azureml://(?:.*/)?datastores/([^/]+)/paths/(.*)$")
_AZURE_HOST = re.compile(r"^([a-z0-9]{3,24})\.(?:blob|dfs)\.(.+)$")


def parse_ref(uri: str) -> Ref | None:
    """What `uri` refers to; None for a local path or an http(s) URL. Raises ValueError
    with the reason for a malformed reference."""
    lowered = uri.lower()
    if lowered.startswith("azureml://"):
        match = _DATASTORE.match(uri)
        if not match:
            raise ValueError(
                "use azureml://datastores/<datastore>/paths/<path> (or azureml:<name>:<version>, "
                "azureml:<name>@latest for a data asset)"
            )
        return DatastoreRef(match.group(1), unquote(match.group(2)).strip("/"))
    if lowered.startswith("azureml:"):
        match = _ASSET.match(uri)
        if not match:
            raise ValueError("use azureml:<name>:<version> or azureml:<name>@latest")
        return AssetRef(match.group(1), match.group(2))
    if lowered.startswith("s3://"):
        parts = urlsplit(uri)
        if not parts.netloc:
            raise ValueError("use s3://<bucket>/<path>")
        return StorageRef("s3", "", "", parts.netloc, unquote(parts.path).strip("/"))
    if lowered.startswith(("wasbs://", "wasb://", "abfss://", "abfs://")):
        parts = urlsplit(uri)
        container, _, host = parts.netloc.partition("@")
        match = _AZURE_HOST.match(host)
        if not container or not match:
            raise ValueError(
                "use wasbs://<container>@<account>.blob.core.windows.net/<path> "
                "(abfss://<file system>@<account>.dfs.core.windows.net/<path>)"
            )
        return StorageRef(
            "azure_blob", match.group(1), match.group(2), container, unquote(parts.path).strip("/")
        )
    if "://" in uri and not lowered.startswith(("http://", "https://")):
        raise ValueError(
            "use a local path, an http(s) URL, azureml:<name>:<version>, "
            "azureml://datastores/<name>/paths/<path>, s3:// or wasbs:// / abfss://"
        )
    return None


def datastore_uri(datastore: str, path: str) -> str:
    return f"azureml://datastores/{datastore}/paths/{path}"
