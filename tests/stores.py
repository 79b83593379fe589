"""Real object stores for the artifact store tests: moto's S3-compatible server and
Microsoft's Azurite (installed from npm by `make test` into tests/servers/)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import wait_until

AZURITE = Path(__file__).parent / "servers" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepting(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 API over real HTTP, with a bucket; yields S3Storage's options."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "bucket_name": f"artifacts-{uuid.uuid4().hex[:8]}",
        "endpoint_url": f"http://{host}:{port}",
        "access_key": "studio",
        "secret_key": "studio-secret",
        "region_name": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
        region_name=options["region_name"],
    ).create_bucket(Bucket=options["bucket_name"])
    try:
        yield options
    finally:
        server.stop()


@contextmanager
def azurite_server() -> Iterator[dict[str, Any]]:
    """Azurite's blob service on a free port, with a container; yields AzureStorage's
    options."""
    from azure.storage.blob import BlobServiceClient

    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: `make test` installs it (npm ci)")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="azurite-")
    process = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
         folder, "--silent", "--skipApiVersionCheck", "--loose"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: process.poll() is not None or accepting(port), what="Azurite")
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with {process.returncode}")
        connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
        container = f"artifacts-{uuid.uuid4().hex[:8]}"
        BlobServiceClient.from_connection_string(connection_string).create_container(container)
        yield {"connection_string": connection_string, "azure_container": container}
    finally:
        process.terminate()  # Azurite waits for idle keep-alive connections: not for long
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def stored_names(kind: str, options: dict[str, Any]) -> set[str]:
    """What the store itself holds, asked with its own client (not through Django)."""
    if kind == "s3":
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=options["endpoint_url"],
            aws_access_key_id=options["access_key"],
            aws_secret_access_key=options["secret_key"],
            region_name=options["region_name"],
        )
        listed = client.list_objects_v2(Bucket=options["bucket_name"])
        return {item["Key"] for item in listed.get("Contents", [])}
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(options["connection_string"])
    return {b.name for b in service.get_container_client(options["azure_container"]).list_blobs()}
