"""Jobs that read data assets, datastore paths and storage URLs, on the local compute:
the files come from real storage (moto's S3 server, Azurite, a host folder)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from data import services as data_services
from jobs.models import DataUse, Job
from jobs.spec import SpecError
from tests import stores
from tests.conftest import await_until, code_archive
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


async def test_named_outputs_go_to_their_datastores_and_become_data_assets(
    workspace, people, controller, s3_store, settings
):
    from compute.backends import artifacts
    from data.models import DataAsset
    from jobs import outputs

    await sync_to_async(data_services.save_datastore)(
        workspace, people.it_ops, s3_document(s3_store)
    )
    prefix = f"o{uuid.uuid4().hex[:8]}"
    text = f"""
command: >-
  echo weights > ${{{{outputs.model}}}}/m.txt && mkdir ${{{{outputs.report}}}}/deep &&
  echo fine > ${{{{outputs.report}}}}/deep/r.txt && echo log > outputs/run.txt
outputs:
  model: {{type: uri_folder, name: trained, version: 1}}
  report: {{type: uri_folder, path: "azureml://datastores/lake/paths/{prefix}/report"}}
"""
    job = await finished(await submit(workspace, people.contributor, text))
    assert job.status == "Completed", job.failure_reason
    # The named output lives in workspaceblobstore at Azure's default place...
    model_uri = f"azureml://datastores/workspaceblobstore/paths/azureml/{job.name}/model"
    assert job.data_outputs["model"] == {"uri": model_uri, "name": "trained", "version": "1"}
    kept = settings.STUDIO_DATASTORES_DIR / str(workspace.pk) / "azureml" / job.name / "model"
    assert (kept / "m.txt").read_text() == "weights\n"
    # ... the other in the bucket it named; ./outputs stays in the artifact store.
    body = (
        s3_client(s3_store)
        .get_object(Bucket=s3_store["bucket_name"], Key=f"{prefix}/report/deep/r.txt")["Body"]
        .read()
    )
    assert body == b"fine\n"
    entries = {(e["output"], e["path"]): e for e in job.outputs}
    assert entries[("report", "deep/r.txt")]["datastore"] == "lake"
    assert "artifact" in entries[("default", "run.txt")]
    # The artifact store's copy of a delivered output goes once the job's end is recorded
    # (beside the controller, so a moment later).
    copy = f"jobs/{job.pk}/outputs/model/m.txt"

    async def dropped() -> bool:
        return not await sync_to_async(artifacts.store().exists)(copy)

    await await_until(dropped, 30, "the artifact copy of the delivered output to go")
    # Downloads read them where they are now.
    with await sync_to_async(outputs.open_file)(job, "report", "deep/r.txt") as f:
        assert f.read() == b"fine\n"
    # The registered asset, and its lineage; the next job reads it by name.
    asset = await DataAsset.objects.aget(name="trained", version="1")
    assert (asset.path, asset.file_count) == (model_uri, 1)
    made = [u async for u in DataUse.objects.filter(asset=asset).values_list("job_id", "direction")]
    assert made == [(job.pk, "output")]
    reader = await finished(await submit(workspace, people.contributor, """
command: cat ${{inputs.model}}/m.txt
inputs: {model: {type: uri_folder, path: "azureml:trained@latest"}}
"""))  # fmt: skip
    assert await lines_of(reader) == ["weights"]

    # Refused at submission: a taken version, a version without a name, a URL as a path.
    with pytest.raises(SpecError) as refused:
        await submit(workspace, people.contributor, """
command: echo
outputs:
  a: {name: trained, version: 1}
  b: {version: 2}
  c: {path: "azureml://datastores/nowhere/paths/x"}
""")  # fmt: skip
    assert dict(refused.value.errors) == {
        "outputs.a.version": "data asset trained:1 already exists; a version never changes",
        "outputs.b.version": "needs a name: the data asset to register",
        "outputs.c.path": "no datastore named 'nowhere' in this workspace",
    }
    with pytest.raises(SpecError) as refused:
        await submit(workspace, people.contributor, """
command: echo
outputs: {c: {path: "https://example.com/x"}}
""")  # fmt: skip
    assert dict(refused.value.errors) == {
        "outputs.c.path": "use a datastore path: azureml://datastores/<name>/paths/<path>",
    }
    # A failed job's outputs are still delivered, but no asset is registered.
    failed = await finished(await submit(workspace, people.contributor, """
command: echo partial > ${{outputs.model}}/p.txt && exit 3
outputs: {model: {name: trained}}
"""))  # fmt: skip
    assert failed.status == "Failed"
    assert failed.failure_reason == "The command exited with code 3."
    assert not await DataAsset.objects.filter(name="trained", version="2").aexists()
    with await sync_to_async(outputs.open_file)(failed, "model", "p.txt") as f:
        assert f.read() == b"partial\n"


async def test_delivering_a_big_output_does_not_hold_up_other_jobs(
    workspace, people, controller, monkeypatch
):
    """The copy to the datastore runs beside the controller: while one job's output is
    still being delivered (held here until the other job is done), another job runs to
    its end."""
    import threading

    from data.stores import FolderStore

    release = threading.Event()
    original = FolderStore.save

    def held_save(self, path, content):
        assert release.wait(60), "the other job never finished"
        return original(self, path, content)

    monkeypatch.setattr(FolderStore, "save", held_save)
    big = await submit(workspace, people.contributor, """
command: echo weights > ${{outputs.model}}/m.txt
outputs: {model: {name: held}}
""")  # fmt: skip

    async def finalizing():
        fresh = await Job.objects.aget(pk=big.pk)
        return fresh.status == "Finalizing"

    await await_until(finalizing, 30, "the job to be delivering its output")
    other = await finished(await submit(workspace, people.contributor, "command: echo other\n"))
    assert other.status == "Completed"
    assert (await Job.objects.aget(pk=big.pk)).status == "Finalizing"
    release.set()
    big = await finished(big)
    assert big.status == "Completed", big.failure_reason
    assert big.outputs[0]["datastore"] == "workspaceblobstore"
