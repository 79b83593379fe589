"""Jobs that read data assets, datastore paths and storage URLs, on the local compute:
the files come from real storage (moto's S3 server, Azurite, a host folder)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from data import services as data_services
from jobs.models import DataUse
from jobs.spec import SpecError
from tests import stores
from tests.conftest import code_archive
from tests.test_controller import controller, finished, lines_of, submit
from tests.test_data import azure_document, s3_client, s3_document

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db_thread")]
__all__ = ["controller"]


@sync_to_async
def prepare(workspace: Any, people: Any, s3_store: dict, azure_store: dict) -> dict[str, str]:
    """An s3 datastore with files, an Azure one with a blob, and three data assets."""
    from azure.storage.blob import BlobServiceClient

    prefix = f"j{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_store)
    for key, body in {"points.csv": b"x,y\n1,2\n", "images/a.txt": b"a",
                      "images/deep/b.txt": b"bb"}.items():  # fmt: skip
        client.put_object(Bucket=s3_store["bucket_name"], Key=f"{prefix}/{key}", Body=body)
    BlobServiceClient.from_connection_string(azure_store["connection_string"]).get_blob_client(
        azure_store["azure_container"], f"{prefix}/words.txt"
    ).upload_blob(b"from azure\n")
    data_services.save_datastore(workspace, people.it_ops, s3_document(s3_store))
    data_services.save_datastore(workspace, people.it_ops, azure_document(azure_store))
    uri = f"azureml://datastores/lake/paths/{prefix}"
    for _ in range(2):
        data_services.create_asset(
            workspace, people.contributor,
            {"name": "points", "type": "uri_file", "path": f"{uri}/points.csv"},
        )  # fmt: skip
    data_services.create_asset(
        workspace, people.contributor, {"name": "shapes", "path": "./shapes"},
        code_archive({"sub/b.txt": b"BB"}),
    )  # fmt: skip
    return {"prefix": prefix, "bucket": s3_store["bucket_name"]}


async def test_a_job_reads_assets_datastore_paths_and_storage_urls(
    workspace, people, controller, s3_store, azure_store
):
    made = await prepare(workspace, people, s3_store, azure_store)
    prefix, bucket = made["prefix"], made["bucket"]
    container = azure_store["azure_container"]
    text = f"""
command: >-
  cat ${{{{inputs.points}}}} &&
  cat ${{{{inputs.images}}}}/a.txt ${{{{inputs.images}}}}/deep/b.txt && echo &&
  echo direct=${{{{inputs.raw}}}} &&
  cat ${{{{inputs.shapes}}}}/sub/b.txt && echo &&
  cat ${{{{inputs.words}}}}
inputs:
  points: {{type: uri_file, path: "azureml:points@latest"}}
  images:
    type: uri_folder
    path: azureml://datastores/lake/paths/{prefix}/images
    mode: ro_mount
  raw: {{type: uri_folder, path: "s3://{bucket}/{prefix}/images", mode: direct}}
  shapes: {{type: uri_folder, path: "azureml:shapes:1"}}
  words:
    type: uri_file
    path: wasbs://{container}@{stores.AZURITE_ACCOUNT}.blob.core.windows.net/{prefix}/words.txt
"""
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", (job.failure_reason, await lines_of(job))
    lines = await lines_of(job)
    assert [line for line in lines if not line.startswith("[kstudio]")] == [
        "x,y", "1,2", "abb", f"direct=s3://{bucket}/{prefix}/images", "BB", "from azure",
    ]  # fmt: skip
    assert (
        "[kstudio] inputs.images: ro_mount is not available on this compute; "
        "downloading the files instead"
    ) in lines
    # @latest was pinned at submission; the lineage names the versions read.
    assert job.data_inputs["points"] == {
        "uri": f"azureml://datastores/lake/paths/{prefix}/points.csv",
        "asset": "points:2",
    }
    uses = [
        (u.name, str(u.asset), u.direction)
        async for u in DataUse.objects.filter(job=job).select_related("asset")
    ]
    assert sorted(uses) == [("points", "points:2", "input"), ("shapes", "shapes:1", "input")]


async def test_data_a_job_cannot_read_fails_it_clearly(workspace, people, controller, s3_store):
    await sync_to_async(data_services.save_datastore)(
        workspace, people.it_ops, s3_document(s3_store)
    )
    # Refused at submission: what can be known then.
    with pytest.raises(SpecError) as refused:
        await submit(workspace, people.contributor, """
command: cat ${{inputs.a}} ${{inputs.b}} ${{inputs.c}}
inputs:
  a: {type: uri_file, path: "azureml:nothing@latest"}
  b: {type: uri_file, path: "azureml://datastores/nowhere/paths/x.csv"}
  c: {type: uri_file, path: "s3://another-bucket/x.csv"}
""")  # fmt: skip
    errors = dict(refused.value.errors)
    assert errors["inputs.a.path"] == "no data asset named 'nothing' in this workspace"
    assert errors["inputs.b.path"] == "no datastore named 'nowhere' in this workspace"
    assert (
        "no s3 datastore in this workspace has the bucket 'another-bucket'"
        in errors["inputs.c.path"]
    )
    # A path that is not there when the job starts: the job fails, saying which input.
    job = await submit(workspace, people.contributor, """
command: cat ${{inputs.a}}
inputs:
  a: {type: uri_file, path: "azureml://datastores/lake/paths/gone/x.csv"}
""")  # fmt: skip
    job = await finished(job)
    assert job.status == "Failed"
    assert job.failure_reason == (
        "Preparing failed: inputs.a: azureml://datastores/lake/paths/gone/x.csv: "
        "no such file or folder"
    )
