"""Datastores and data assets over the API, on real storage: moto's S3 server and
Azurite, over HTTP with the storages' own client libraries."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from data.models import DataAsset, Datastore
from tests import stores
from tests.conftest import code_archive

pytestmark = pytest.mark.django_db

SECRET_MARK = "secret"


def s3_client(options: dict[str, Any]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
        region_name=options["region_name"],
    )


def s3_document(options: dict[str, Any], name: str = "lake", **changes: Any) -> dict[str, Any]:
    document = {
        "name": name,
        "type": "s3",
        "bucket": options["bucket_name"],
        "endpoint_url": options["endpoint_url"],
        "region": options["region_name"],
        "credentials": {
            "access_key_id": options["access_key"],
            "secret_access_key": options["secret_key"],
        },
    }
    return {**document, **changes}


def azure_document(options: dict[str, Any], name: str = "blobs", **changes: Any) -> dict[str, Any]:
    endpoint = dict(part.split("=", 1) for part in options["connection_string"].split(";") if part)[
        "BlobEndpoint"
    ]
    document = {
        "name": name,
        "type": "azure_blob",
        "account_name": stores.AZURITE_ACCOUNT,
        "container_name": options["azure_container"],
        "account_url": endpoint,
        "credentials": {"account_key": stores.AZURITE_KEY},
    }
    return {**document, **changes}


def put(client: Any, document: dict[str, Any]) -> Any:
    return client.put(
        f"/api/v1/workspaces/demo/datastores/{document['name']}/", document, format="json"
    )


def fields(response: Any) -> dict[str, str]:
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def test_every_workspace_has_a_default_datastore(api, people):
    listed = api(people.reader).get("/api/v1/workspaces/demo/datastores/").json()
    assert [(d["name"], d["type"], d["is_default"]) for d in listed] == [
        ("workspaceblobstore", "local", True)
    ]
    refused = api(people.owner).delete("/api/v1/workspaces/demo/datastores/workspaceblobstore/")
    assert refused.status_code == 409
    assert "default datastore" in refused.json()["detail"]


def test_an_s3_datastore_is_checked_before_it_is_kept_and_its_secret_never_shown(
    api, people, s3_store
):
    document = s3_document(s3_store)
    # An owner may not point the studio at its own network (moto listens on 127.0.0.1).
    refused = put(api(people.owner), document)
    assert refused.status_code == 400
    assert "only IT-ops" in fields(refused)["endpoint_url"]

    # moto checks no signatures (Azurite does: see the next test); a missing bucket it refuses.
    missing = put(api(people.it_ops), s3_document(s3_store, bucket="no-such-bucket"))
    assert missing.status_code == 400
    assert fields(missing) == {"bucket": "the bucket 'no-such-bucket' does not exist"}
    assert not Datastore.objects.filter(name="lake").exists()

    made = put(api(people.it_ops), document)
    assert made.status_code == 201, made.content
    shown = api(people.reader).get("/api/v1/workspaces/demo/datastores/lake/")
    assert shown.json()["credentials"] == ["access_key_id", "secret_access_key"]
    assert shown.json()["bucket"] == s3_store["bucket_name"]
    for response in (made, shown, api(people.reader).get("/api/v1/workspaces/demo/datastores/")):
        assert s3_store["secret_key"] not in response.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM data_datastore WHERE name = 'lake'")
        (stored,) = cursor.fetchone()
    assert s3_store["secret_key"] not in stored and s3_store["access_key"] not in stored

    # An update without credentials keeps the stored ones; readers may not change it.
    kept = put(api(people.it_ops), {**document, "credentials": None, "description": "raw data"})
    assert kept.status_code == 200, kept.content
    assert kept.json()["credentials"] == ["access_key_id", "secret_access_key"]
    assert put(api(people.reader), document).status_code == 403


def test_an_azure_blob_datastore_takes_an_account_key_or_a_sas_token(api, people, azure_store):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    # An owner may not point the studio inside its network (Azurite is on 127.0.0.1).
    refused = put(api(people.owner), azure_document(azure_store))
    assert "only IT-ops" in fields(refused)["account_url"]
    made = put(api(people.it_ops), azure_document(azure_store))
    assert made.status_code == 201, made.content
    assert made.json()["credentials"] == ["account_key"]

    bad_key = azure_document(azure_store, name="bad", credentials={"account_key": "bm90LWl0"})
    refused = put(api(people.it_ops), bad_key)
    assert refused.status_code == 400
    assert fields(refused) == {"credentials": "the account key or SAS token was not accepted"}

    import datetime as dt

    sas = generate_container_sas(
        stores.AZURITE_ACCOUNT,
        azure_store["azure_container"],
        account_key=stores.AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    with_sas = azure_document(azure_store, name="shared", credentials={"sas_token": sas})
    assert put(api(people.it_ops), with_sas).status_code == 201
    both = azure_document(azure_store, name="both", credentials={
        "account_key": stores.AZURITE_KEY, "sas_token": sas})  # fmt: skip
    assert fields(put(api(people.it_ops), both)) == {
        "credentials": "give account_key or sas_token (one of them)"
    }
    assert sas not in api(people.reader).get("/api/v1/workspaces/demo/datastores/").content.decode()


@pytest.mark.parametrize(
    "trick",
    ["{scheme}://{host}\\@1.1.1.1/", "{scheme}://1.1.1.1@{host}/", "{scheme}://{host}%5C@1.1.1.1/",
     "{scheme}://1.1.1.1#@{host}/", "{scheme}://{host} /"],
)  # fmt: skip
def test_an_endpoint_that_url_parsers_read_differently_is_refused(
    api, people, s3_store, azure_store, trick
):
    """`http://127.0.0.1:PORT\\@1.1.1.1/`: urllib saw host 1.1.1.1 and let an owner keep it,
    boto3 connected to 127.0.0.1. Such URLs are refused whole, before any connection."""
    s3_host = s3_store["endpoint_url"].split("://")[1].rstrip("/")
    s3 = s3_document(s3_store, endpoint_url=trick.format(scheme="http", host=s3_host))
    blob_host = azure_document(azure_store)["account_url"].split("://")[1].split("/")[0]
    blob = azure_document(azure_store, account_url=trick.format(scheme="http", host=blob_host))
    for document, field in ((s3, "endpoint_url"), (blob, "account_url")):
        for who in (people.owner, people.it_ops):
            refused = put(api(who), document)
            assert refused.status_code == 400, (document, refused.content)
            assert set(fields(refused)) == {field}
    assert not Datastore.objects.filter(name__in=["lake", "blobs"]).exists()


def test_an_owners_datastore_never_connects_inward_whatever_its_name_resolves_to(
    people, workspace, s3_store
):
    """A name may resolve to a public address when the datastore is saved and to 127.0.0.1
    later (DNS rebinding): the address connected to is checked, not the one seen once. And
    the refusal is the same whether anything listens there or not."""
    import socket

    from data.services import save_datastore
    from data.stores import StoreError, open_store

    document = s3_document(s3_store)
    kept = save_datastore(workspace, people.it_ops, document)
    assert kept.inward
    open_store(kept).check()  # IT-ops may use storage inside the network

    kept.inward = False  # as an owner's save records it
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    answers = []
    for endpoint in (s3_store["endpoint_url"], closed_url):
        kept.location = {**kept.location, "endpoint_url": endpoint}
        with pytest.raises(StoreError) as refused:
            open_store(kept).check()
        answers.append(str(refused.value).replace(endpoint, "<endpoint>"))
    assert answers[0] == answers[1] == "cannot reach a storage service at <endpoint>"


def test_datastore_documents_are_refused_by_field(api, people):
    owner = api(people.owner)
    cases = [
        ({"name": "x", "type": "azure_file"}, "type", "not supported"),
        ({"name": "x", "type": "gcs"}, "type", "unknown type 'gcs'"),
        ({"name": "x", "type": "s3", "bucket": "B!"}, "bucket", "should match"),
        ({"name": "x", "type": "s3", "bucket": "data", "colour": 1}, "colour", "unknown field"),
    ]
    for document, field, message in cases:
        response = put(owner, document)
        assert response.status_code == 400, document
        assert message in fields(response)[field], fields(response)
    # A folder on the studio's host is for IT-ops alone.
    local = {"name": "host", "type": "local", "path": "/etc"}
    assert put(owner, local).status_code == 403
    assert not Datastore.objects.filter(name__in=["x", "host"]).exists()


@pytest.fixture
def lake(api, people, s3_store) -> dict[str, Any]:
    """An s3 datastore `lake` holding points.csv, images/ and table/ (with an MLTable)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_store)
    for key, body in {
        "points.csv": b"x,y\n1,2\n",
        "images/a.txt": b"a",
        "images/deep/b.txt": b"bb",
        "table/MLTable": b"paths:\n  - file: ./rows.csv\n",
        "table/rows.csv": b"1\n",
    }.items():
        client.put_object(Bucket=s3_store["bucket_name"], Key=f"{prefix}/{key}", Body=body)
    assert put(api(people.it_ops), s3_document(s3_store)).status_code == 201
    return {"prefix": prefix, "options": s3_store}


def create_data(client: Any, document: dict[str, Any]) -> Any:
    return client.post("/api/v1/workspaces/demo/data/", document, format="json")


def test_data_assets_are_versioned_and_a_version_never_changes(api, people, lake):
    writer = api(people.contributor)
    uri = f"azureml://datastores/lake/paths/{lake['prefix']}"
    first = create_data(writer, {"name": "points", "type": "uri_file", "path": f"{uri}/points.csv"})
    assert first.status_code == 201, first.content
    assert (first.json()["version"], first.json()["size"]) == ("1", 8)
    second = create_data(writer, {"name": "points", "type": "uri_file", "path": f"{uri}/points.csv",
                                  "description": "again"})  # fmt: skip
    assert second.json()["version"] == "2"
    again = create_data(writer, {"name": "points", "version": 1, "type": "uri_file",
                                 "path": f"{uri}/images"})  # fmt: skip
    assert again.status_code == 409
    assert "never changes" in again.json()["detail"]

    reader = api(people.reader)
    latest = reader.get("/api/v1/workspaces/demo/data/points/versions/latest/").json()
    assert (latest["version"], latest["description"]) == ("2", "again")
    assert [v["version"] for v in reader.get("/api/v1/workspaces/demo/data/points/").json()] == [
        "2",
        "1",
    ]
    listed = reader.get("/api/v1/workspaces/demo/data/").json()
    assert [(a["name"], a["version"], a["versions"]) for a in listed] == [("points", "2", 2)]

    folder = create_data(writer, {"name": "images", "path": f"{uri}/images"})
    assert (folder.json()["type"], folder.json()["file_count"], folder.json()["size"]) == (
        "uri_folder", 2, 3,
    )  # fmt: skip
    table = create_data(writer, {"name": "rows", "type": "mltable", "path": f"{uri}/table"})
    assert table.status_code == 201, table.content
    assert put(api(people.it_ops), {"name": "lake", "type": "s3"}).status_code == 400
    held = api(people.owner).delete("/api/v1/workspaces/demo/datastores/lake/")
    assert held.status_code == 409
    assert "points:1" in held.json()["detail"]


def test_a_data_asset_that_does_not_fit_its_path_is_refused_by_field(api, people, lake):
    writer = api(people.contributor)
    uri = f"azureml://datastores/lake/paths/{lake['prefix']}"
    cases = [
        ({"type": "uri_file", "path": f"{uri}/images"}, "path", "is a folder"),
        ({"type": "uri_folder", "path": f"{uri}/points.csv"}, "path", "is a file"),
        ({"type": "mltable", "path": f"{uri}/images"}, "path", "no MLTable file"),
        ({"path": f"{uri}/nothing-here"}, "path", "no such file or folder"),
        ({"path": "azureml://datastores/nope/paths/x"}, "path", "no datastore named 'nope'"),
        ({"path": "s3://other-bucket/x"}, "path", "no s3 datastore"),
        ({"path": "wasbs://c@acct.blob.internal.example/x"}, "path", "Azure's own endpoints"),
        ({"path": "ftp://host/x"}, "path", "use a local path"),
        ({"path": "./local"}, "path", "none came with this request"),
        ({"path": f"{uri}/images", "version": "latest"}, "version", "not 'latest'"),
        ({"path": f"{uri}/images", "type": "table"}, "type", "Input should be"),
    ]
    for changes, field, message in cases:
        response = create_data(writer, {"name": "bad", **changes})
        assert response.status_code == 400, changes
        assert message in fields(response).get(field, ""), (changes, fields(response))
    assert not DataAsset.objects.filter(name="bad").exists()
    assert create_data(api(people.reader), {"name": "r", "path": uri}).status_code == 403


def test_a_local_folder_is_uploaded_to_the_default_datastore(api, people, settings):
    spec = "name: shapes\ntype: uri_folder\npath: ./shapes\n"
    response = api(people.contributor).post(
        "/api/v1/workspaces/demo/data/",
        {"spec": spec, "file": code_archive({"a.txt": b"A", "sub/b.txt": b"BB"})},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    made = response.json()
    assert made["path"].startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
    assert made["path"].endswith("/shapes")
    assert (made["file_count"], made["size"]) == (2, 3)
    workspace_id = Datastore.objects.get(name="workspaceblobstore").workspace_id
    relative = made["path"].split("/paths/", 1)[1]
    kept = Path(settings.STUDIO_DATASTORES_DIR) / str(workspace_id) / relative
    assert (kept / "sub" / "b.txt").read_bytes() == b"BB"


def test_the_cli_manages_datastores_and_data(kstudio, people, s3_store, tmp_path):
    from tests.conftest import token_for

    as_it_ops = {"KSTUDIO_TOKEN": token_for(people.it_ops)}
    store_file = tmp_path / "store.yml"
    store_file.write_text(json.dumps(s3_document(s3_store, name="cli-lake")))
    made = kstudio("datastore", "create", "-f", str(store_file), "-o", "json", **as_it_ops)
    assert made.returncode == 0, made.stderr
    assert s3_store["secret_key"] not in made.stdout
    table = kstudio("datastore", "list", check=True).stdout
    assert "cli-lake" in table and "workspaceblobstore" in table

    folder = tmp_path / "shapes"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "b.txt").write_text("BB")
    (tmp_path / "data.yml").write_text("name: shapes\npath: ./shapes\n")
    kstudio("data", "create", "-f", str(tmp_path / "data.yml"), check=True)
    kstudio("data", "create", "-f", str(tmp_path / "data.yml"), check=True)
    shown = json.loads(kstudio("data", "show", "shapes@latest", "-o", "json", check=True).stdout)
    assert (shown["version"], shown["file_count"]) == ("2", 1)
    first = json.loads(kstudio("data", "show", "azureml:shapes:1", "-o", "json", check=True).stdout)
    assert first["version"] == "1"
    missing = kstudio("data", "create", "-f", str(tmp_path / "data.yml"), "--path", "./nope")
    assert missing.returncode == 2
    assert "path:" in missing.stderr and "does not exist" in missing.stderr
    refused = kstudio("datastore", "delete", "cli-lake")
    assert refused.returncode == 1 and "needs the owner role" in refused.stderr
    gone = kstudio("datastore", "delete", "nope", **as_it_ops)
    assert gone.returncode == 1 and "No datastore named 'nope'" in gone.stderr
    kstudio("datastore", "delete", "cli-lake", check=True, **as_it_ops)


def test_owners_and_it_ops_manage_datastores_on_a_page(client, people, s3_store, settings):
    url = "/workspaces/demo/data/datastores/"
    client.force_login(people.reader)
    assert client.post(url, {"document": "name: x\ntype: s3\nbucket: data\n"}).status_code == 403
    client.force_login(people.owner)
    page = client.post(url, {"document": "name: host\ntype: local\npath: /etc\n"})
    assert page.status_code == 400
    assert "Only IT-ops may make a datastore of a folder" in page.content.decode()
    page = client.post(url, {"document": "name: x\ntype: s3\nbucket: B!\n"})
    assert page.status_code == 400 and "<code>bucket</code>" in page.content.decode()
    assert not Datastore.objects.filter(name__in=["host", "x"]).exists()

    client.force_login(people.it_ops)  # not a member: IT-ops manage every workspace's
    document = json.dumps(s3_document(s3_store, name="lake"))
    saved = client.post(url, {"document": document})
    assert saved.status_code == 302
    listed = client.get(url).content.decode()
    assert "lake" in listed and s3_store["secret_key"] not in listed
    assert client.post(url + "lake/delete/").status_code == 302
    assert not Datastore.objects.filter(name="lake").exists()


def test_a_blob_endpoint_that_answers_200_with_no_xml_is_refused_in_words(api, people):
    """It raised azure-core's DeserializationError, which is no AzureError: a 500."""
    import http.server
    import threading

    class NotStorage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>a login page, say</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotStorage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/devstoreaccount1"
        document = {"name": "blobs", "type": "azure_blob", "account_name": "devstoreaccount1",
                    "container_name": "data", "account_url": url,
                    "credentials": {"account_key": stores.AZURITE_KEY}}  # fmt: skip
        refused = put(api(people.it_ops), document)
    finally:
        server.shutdown()
    assert refused.status_code == 400, refused.content
    assert fields(refused) == {"account_url": f"cannot reach a storage service at {url}"}
    assert not Datastore.objects.filter(name="blobs").exists()


@pytest.fixture
def redirector(monkeypatch):
    """A 'public' storage service (127.0.0.5, taken for a public address here) that answers
    every request with a redirect to a loopback service, which counts who reaches it."""
    import http.server
    import threading

    from data import network

    reached: list[str] = []

    class Inward(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reached.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_HEAD = do_PUT = do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    inward = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Inward)
    target = f"http://127.0.0.1:{inward.server_address[1]}/secret"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_PUT = do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    outward = http.server.ThreadingHTTPServer(("127.0.0.5", 0), Redirect)
    for server in (inward, outward):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    real = network.is_public
    monkeypatch.setattr(network, "is_public", lambda a: a == "127.0.0.5" or real(a))
    yield f"http://127.0.0.5:{outward.server_address[1]}", reached
    for server in (inward, outward):
        server.shutdown()
        server.server_close()


def test_a_redirect_to_an_inward_host_is_refused_like_the_host_itself(
    people, workspace, s3_store, azure_store, redirector
):
    """The address checked is the one each connection goes to, so a public storage service
    that redirects to a loopback one leads nowhere: not with a client that follows
    redirects (urllib3's own), nor with the datastores' clients, which say the same as for
    any unreachable service."""
    import urllib3

    from data.network import public_only
    from data.services import save_datastore
    from studio.errors import FieldErrors

    outward, reached = redirector
    with public_only(), pytest.raises(urllib3.exceptions.MaxRetryError) as refused:
        urllib3.PoolManager().request("GET", outward + "/x", redirect=True, retries=3)
    assert "not a public address" in str(refused.value.reason), refused.value.reason
    # Outside public_only, the same client does follow it: the check is what stops it.
    assert urllib3.PoolManager().request("GET", outward + "/x").status == 200
    assert reached == ["/secret"]

    account = f"{outward}/{stores.AZURITE_ACCOUNT}"
    documents = [
        ("endpoint_url", outward, s3_document(s3_store, endpoint_url=outward)),
        ("account_url", account, azure_document(azure_store, account_url=account)),
    ]
    for field, url, document in documents:
        with pytest.raises(FieldErrors) as said:
            save_datastore(workspace, people.owner, document)
        # As for a closed port: nothing tells that an HTTP server answered there.
        assert said.value.errors == [(field, f"cannot reach a storage service at {url}")]
    assert not Datastore.objects.filter(name__in=["lake", "blobs"]).exists()
    assert reached == ["/secret"]  # nobody else got there
