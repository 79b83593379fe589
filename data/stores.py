"""Reading and writing a datastore, whatever its kind, with the storage's own client
library (boto3, azure-storage-blob) or the host's file system.

Paths are relative to the datastore's root (a bucket, a container, a folder), '/'
separated; a folder is a prefix. Failures come back as `StoreError`, in words a user can
act on ("the bucket does not exist", "the key was refused"), never as a client's
exception.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, cast
from urllib.parse import quote

from compute.backends.artifacts import NotBeneath, open_beneath, parts_of
from data.models import Datastore, DatastoreKind
from data.network import public_only

CHUNK = 1024 * 1024
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Any)


def _guarded(method: F) -> F:
    """The store's connections reach public addresses only, unless IT-ops saved it."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with public_only(self.public_only):
            return method(self, *args, **kwargs)

    return cast(F, call)


def _unreachable(where: str, exc: Exception) -> StoreError:
    """One message for every way a connection fails (refused, timed out, not public, not
    a storage service), so that the answer cannot map which ports are open."""
    log.info("storage at %s not reached: %s", where, exc)
    return StoreError(f"cannot reach a storage service at {where}", "")


class StoreError(Exception):
    """The storage could not be reached or refused: the message says which, in words;
    `field` names the datastore field at fault when one is (credentials, an endpoint)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class File:
    path: str  # from the datastore's root
    size: int


class Store(Protocol):
    def walk(self, prefix: str, limit: int) -> list[File]:
        """The file at `prefix`, or every file beneath it as a folder (at most `limit`;
        StoreError past it)."""

    def open(self, path: str) -> IO[bytes]: ...

    def save(self, path: str, content: IO[bytes]) -> None: ...

    def signed_url(self, path: str, seconds: int) -> str | None:
        """A URL that reads this one file without other credentials, for `seconds`; None
        when the storage has no such thing (a host folder)."""

    def native_url(self, path: str) -> str:
        """How the storage itself names the path (what a job gets for mode `direct`)."""

    def check(self) -> None:
        """Raise StoreError unless the storage answers and the credentials are accepted."""


def open_store(datastore: Datastore) -> Store:
    credentials = json.loads(datastore.credentials) if datastore.credentials else {}
    location = datastore.location
    if datastore.kind == DatastoreKind.S3:
        return S3Store(location, credentials, public_only=not datastore.inward)
    if datastore.kind == DatastoreKind.AZURE_BLOB:
        return AzureBlobStore(location, credentials, public_only=not datastore.inward)
    return FolderStore(Path(location["path"]))


def _too_many(prefix: str, limit: int) -> StoreError:
    return StoreError(f"{prefix or 'the datastore'} holds more than {limit:,} files")


def _key(prefix: str) -> str:
    """A path as a key: no leading '/', no '..' (a key is a name, but the same rule as a
    folder's keeps a path meaning one thing everywhere)."""
    cleaned = prefix.strip("/")
    if cleaned:
        try:
            parts_of(cleaned)
        except NotBeneath as exc:
            raise StoreError(str(exc)) from exc
    return cleaned


class FolderStore:
    """A folder on the studio host (the embedded default's workspaceblobstore). Links are
    never followed: what a job or user left there cannot point elsewhere."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def walk(self, prefix: str, limit: int) -> list[File]:
        key = _key(prefix)
        top = self.root / key
        try:
            info = os.lstat(top)
        except FileNotFoundError:
            return []
        if stat.S_ISREG(info.st_mode):
            return [File(key, info.st_size)]
        if not stat.S_ISDIR(info.st_mode):
            return []
        found: list[File] = []
        for dirpath, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                entry = os.lstat(path)
                if stat.S_ISREG(entry.st_mode):
                    if len(found) >= limit:
                        raise _too_many(prefix, limit)
                    found.append(File(os.path.relpath(path, self.root), entry.st_size))
        return found

    def open(self, path: str) -> IO[bytes]:
        try:
            return open_beneath(self.root, _key(path))
        except NotBeneath as exc:
            raise StoreError(str(exc)) from exc

    def save(self, path: str, content: IO[bytes]) -> None:
        target = self.root / _key(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(content, out, CHUNK)

    def signed_url(self, path: str, seconds: int) -> str | None:
        return None

    def native_url(self, path: str) -> str:
        return str(self.root / _key(path))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use the folder {self.root}: {exc.strerror}") from exc


class S3Store:
    def __init__(
        self, location: dict[str, Any], credentials: dict[str, str], public_only: bool = False
    ) -> None:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        self.public_only = public_only
        self.bucket = location["bucket"]
        self.endpoint_url = location.get("endpoint_url") or None
        config = Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2},
            # MinIO and Ceph want path-style addressing; AWS takes either.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            signature_version=UNSIGNED if not credentials else None,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=location.get("region") or "us-east-1",
            aws_access_key_id=credentials.get("access_key_id"),
            aws_secret_access_key=credentials.get("secret_access_key"),
            config=config,
        )
        if self.endpoint_url:
            # An S3-compatible service of one's own never moves buckets between regions:
            # its redirect is refused before botocore's region redirector follows it (which,
            # answered 307 on every call, asks for the bucket's region without end).
            self.client.meta.events.register_first("needs-retry.s3", _no_redirects)

    def _words(self, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            message = {
                "NoSuchBucket": f"the bucket {self.bucket!r} does not exist",
                "404": f"the bucket {self.bucket!r} does not exist",
                "InvalidAccessKeyId": "the access key id was not accepted",
                "SignatureDoesNotMatch": "the secret access key was not accepted",
                "AccessDenied": "the credentials may not read this bucket",
                "403": "the credentials may not read this bucket",
                "NoSuchKey": "no such file in the bucket",
            }.get(code, f"the S3 service refused: {code or exc}")
            refused = code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
            return StoreError(message, "credentials" if refused else "")
        error = _unreachable(self.endpoint_url or "S3", exc)
        error.field = "endpoint_url"
        return error

    @_guarded
    def walk(self, prefix: str, limit: int) -> list[File]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = _key(prefix)
        found: list[File] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"]
                    # `key` itself is a file; otherwise only what lies beneath it as a folder.
                    if name != key and key and not name.startswith(key + "/"):
                        continue
                    if name.endswith("/"):
                        continue  # a folder marker some tools write
                    if len(found) >= limit:
                        raise _too_many(prefix, limit)
                    found.append(File(name, int(item["Size"])))
        except (BotoCoreError, ClientError) as exc:
            raise self._words(exc) from exc
        exact = [f for f in found if f.path == key]
        return exact or found

    @_guarded
    def open(self, path: str) -> IO[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=_key(path))["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._words(exc) from exc
        return body

    @_guarded
    def save(self, path: str, content: IO[bytes]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(content, self.bucket, _key(path))
        except (BotoCoreError, ClientError) as exc:
            raise self._words(exc) from exc

    def signed_url(self, path: str, seconds: int) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": _key(path)}, ExpiresIn=seconds
        )
        return url

    def native_url(self, path: str) -> str:
        return f"s3://{self.bucket}/{_key(path)}"

    @_guarded
    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise self._words(exc) from exc


def _no_redirects(response: Any = None, **kwargs: Any) -> None:
    from botocore.exceptions import BotoCoreError

    if response is not None and 300 <= response[0].status_code < 400:
        raise BotoCoreError(msg="the storage service answered with a redirect")


# What azure-storage-blob raises when what answered is not a blob service (HTML where it
# wants XML, XML of another shape): its parser's errors, none of them an AzureError.
NOT_BLOB_STORAGE = (ValueError, AttributeError, KeyError, TypeError)


class AzureBlobStore:
    def __init__(
        self, location: dict[str, Any], credentials: dict[str, str], public_only: bool = False
    ) -> None:
        from azure.storage.blob import ContainerClient

        self.public_only = public_only
        self.account = location["account_name"]
        self.container = location["container_name"]
        self.account_url = account_url(location)
        self.account_key = credentials.get("account_key")
        self.sas_token = (credentials.get("sas_token") or "").lstrip("?")
        credential: Any = self.account_key and {
            "account_name": self.account,
            "account_key": self.account_key,
        }
        self.client = ContainerClient(
            self.account_url,
            self.container,
            credential=credential or self.sas_token or None,
            connection_timeout=5,
            read_timeout=30,
            retry_total=1,
            permit_redirects=False,  # a redirect could lead anywhere: the service never sends one
        )

    def _words(self, exc: Exception) -> StoreError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        if isinstance(exc, ResourceNotFoundError):
            code = getattr(exc, "error_code", "") or ""
            if "Container" in str(code):
                return StoreError(f"the container {self.container!r} does not exist")
            return StoreError("no such blob in the container")
        if isinstance(exc, ClientAuthenticationError):
            return StoreError("the account key or SAS token was not accepted", "credentials")
        redirect = isinstance(exc, HttpResponseError) and 300 <= (exc.status_code or 0) < 400
        if redirect or isinstance(exc, (ServiceRequestError, *NOT_BLOB_STORAGE)):
            # A redirect is not followed, and says no more than a closed port would.
            error = _unreachable(self.account_url, exc)
            error.field = "account_url"
            return error
        if isinstance(exc, HttpResponseError):
            if exc.status_code == 403:  # AuthorizationFailure, AuthenticationFailed
                return StoreError("the account key or SAS token was not accepted", "credentials")
            return StoreError(f"the blob service refused: {exc.reason or exc.message}")
        return StoreError(str(exc))

    @_guarded
    def walk(self, prefix: str, limit: int) -> list[File]:
        from azure.core.exceptions import AzureError

        key = _key(prefix)
        found: list[File] = []
        try:
            for blob in self.client.list_blobs(name_starts_with=key or None):
                name = blob.name
                if name != key and key and not name.startswith(key + "/"):
                    continue
                if len(found) >= limit:
                    raise _too_many(prefix, limit)
                found.append(File(name, int(blob.size)))
        except (AzureError, *NOT_BLOB_STORAGE) as exc:
            raise self._words(exc) from exc
        exact = [f for f in found if f.path == key]
        return exact or found

    @_guarded
    def open(self, path: str) -> IO[bytes]:
        from azure.core.exceptions import AzureError

        try:
            downloader = self.client.download_blob(_key(path))
        except (AzureError, *NOT_BLOB_STORAGE) as exc:
            raise self._words(exc) from exc
        return cast(IO[bytes], _Chunks(downloader.chunks(), self.public_only))

    @_guarded
    def save(self, path: str, content: IO[bytes]) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.client.upload_blob(_key(path), content, overwrite=True)
        except (AzureError, *NOT_BLOB_STORAGE) as exc:
            raise self._words(exc) from exc

    def _blob_url(self, path: str) -> str:
        return f"{self.client.url.rstrip('/')}/{quote(_key(path))}"

    def signed_url(self, path: str, seconds: int) -> str | None:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        url = self._blob_url(path).split("?")[0]
        if self.account_key:
            sas = generate_blob_sas(
                self.account,
                self.container,
                _key(path),
                account_key=self.account_key,
                permission=BlobSasPermissions(read=True),
                expiry=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds),
            )
            return f"{url}?{sas}"
        return f"{url}?{self.sas_token}" if self.sas_token else url

    def native_url(self, path: str) -> str:
        return self._blob_url(path).split("?")[0]

    @_guarded
    def check(self) -> None:
        from azure.core.exceptions import AzureError

        try:
            next(iter(self.client.list_blobs(results_per_page=1).by_page()), None)
        except (AzureError, *NOT_BLOB_STORAGE) as exc:
            raise self._words(exc) from exc


def account_url(location: dict[str, Any]) -> str:
    """The blob service's URL: given outright (Azurite, a sovereign cloud), or made from
    Azure's datastore fields."""
    if location.get("account_url"):
        return str(location["account_url"]).rstrip("/")
    protocol = "http" if location.get("protocol") == "http" else "https"
    endpoint = location.get("endpoint") or "core.windows.net"
    return f"{protocol}://{location['account_name']}.blob.{endpoint}"


class _Chunks:
    """A blob's download as a readable file (what FileResponse and copyfileobj want)."""

    def __init__(self, chunks: Iterator[bytes], public: bool = False) -> None:
        self.chunks = chunks
        self.public_only = public
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.pending) < size:
            with public_only(self.public_only):  # a later chunk may need a new connection
                chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.pending += chunk
        if size < 0:
            data, self.pending = self.pending, b""
        else:
            data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def close(self) -> None:
        self.pending = b""

    def __enter__(self) -> _Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
