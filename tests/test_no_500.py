"""Every route of the API, sent what a careless script or a hostile one sends (bodies of
the wrong shape, odd query parameters, names that do not exist), answers in words:
never a 500. The routes come from the API's own OpenAPI schema, so a new one is covered
the day it is added."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from tests.conftest import code_archive

pytestmark = pytest.mark.django_db

# Values for path parameters: one of each kind of object exists under these names (see
# `made`); each route is also sent names that do not exist, or cannot.
KNOWN = {"workspace": "demo", "name": "thing", "endpoint": "thing", "username": "carl",
         "version": "1", "output": "default", "path": "a.txt", "id": "1",
         "cluster": "thing"}  # fmt: skip
BODIES: list[Any] = [
    {},
    [],
    "text",
    17,
    None,
    {"yaml": 17},
    {"yaml": "- a list\n- not a mapping\n"},
    {"yaml": "name: [unclosed\n"},
    {"name": ["not", "a", "string"], "spec": "{", "traffic": "all", "description": {"a": 1}},
    {"name": "x" * 5000, "tags": "not-a-mapping", "version": -1, "instance_count": "two"},
    {"traffic": {"blue": "ninety"}, "mirror_traffic": [1], "kubeconfig": 3, "settings": 4},
]
QUERIES = [
    "",
    "?limit=abc&offset=-5&after=x&lines=-1&instance=zz&since=never&container=%00",
    "?limit=99999999999999999999&after=99999999999999999999&step=1e400&run=../../etc",
]


def routes(api: Any, user: Any) -> list[tuple[str, str]]:
    """Every (method, path) of the schema; deletes last, so the objects are there for
    the rest."""
    schema = yaml.safe_load(api(user).get("/api/v1/schema/").content)
    found = [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]
    return sorted(found, key=lambda each: each[0] == "DELETE")


def fill(path: str, value: str | None) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: value or KNOWN.get(m.group(1), "nothing-here"), path)


def made(api: Any, people: Any, workspace: Any) -> None:
    """One of each, named `thing` (none of them run: no controller or runner is on)."""
    store = Path(settings.STUDIO_DATASTORES_DIR) / str(workspace.pk)
    store.mkdir(parents=True, exist_ok=True)
    (store / "m.pkl").write_bytes(b"model")
    (store / "d.csv").write_text("a,b\n1,2\n")
    owner = api(people.owner)
    base = "/api/v1/workspaces/demo/"
    spec = {"name": "thing", "endpoint_name": "thing",
            "code_configuration": {"code": ".", "scoring_script": "score.py"}}  # fmt: skip
    for path, body, kind in [
        ("jobs/", {"yaml": "name: thing\ncommand: echo hi\n"}, "json"),
        ("online-endpoints/", {"yaml": "name: thing\n"}, "json"),
        ("online-endpoints/thing/deployments/",
         {"spec": json.dumps(spec), "code": ("code.tar.gz", code_archive(SCORE))}, "multipart"),
        ("batch-endpoints/", {"yaml": "name: thing\n"}, "json"),
        ("environments/", {"name": "thing", "image": "python:3.11-slim"}, "json"),
        ("models/", {"yaml": "name: thing\npath: azureml://datastores/workspaceblobstore/paths/m.pkl\n"},
         "json"),
        ("data/", {"name": "thing", "type": "uri_file",
                   "path": "azureml://datastores/workspaceblobstore/paths/d.csv"}, "json"),
    ]:  # fmt: skip
        answer = owner.post(base + path, body, format=kind)
        assert answer.status_code == 201, (path, answer.content)


def test_no_route_answers_500_to_bad_input(api, people, workspace):
    made(api, people, workspace)
    seen: list[str] = []
    for user in (people.owner, people.it_ops):
        caller = api(user)
        caller.raise_request_exception = False
        for method, template in routes(api, user):
            for value in (None, "nothing-here", "%2e%2e", "x" * 300):
                path = fill(template, value)
                for query in QUERIES:
                    sends = [None] if method in ("GET", "DELETE") else BODIES
                    for body in sends:
                        answer = caller.generic(
                            method, path + query, data=_json(body),
                            content_type="application/json",
                        )  # fmt: skip
                        if answer.status_code >= 500:
                            seen.append(f"{method} {path}{query} {body!r:.80} -> "
                                        f"{answer.status_code}")  # fmt: skip
                if method in ("POST", "PUT", "PATCH"):
                    # multipart with a broken archive and a spec that is not JSON
                    answer = caller.generic(method, path, data=_multipart(), content_type=MULTIPART)
                    if answer.status_code >= 500:
                        seen.append(f"{method} {path} multipart -> {answer.status_code}")
    assert not seen, "\n".join(seen)


SCORE = {"score.py": b"def init():\n    pass\n\ndef run(raw):\n    return raw\n"}
MULTIPART = "multipart/form-data; boundary=BOUNDARY"


def _multipart() -> bytes:
    parts = [
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{not json\r\n',
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="yaml"\r\n\r\n: : :\r\n',
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="code"; filename="c.tar.gz"\r\n'
        b"Content-Type: application/gzip\r\n\r\nnot an archive\r\n",
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="m.pkl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + code_archive().read() + b"\r\n",
        b"--BOUNDARY--\r\n",
    ]
    return b"".join(parts)


def _json(body: Any) -> str:
    return json.dumps(body)


# Form fields the pages take, filled wrongly.
FORM = {
    "yaml": ": : :", "name": "x" * 300, "spec": "{", "traffic": "all", "blue": "ninety",
    "thing": "-5", "weight": "1e400", "key_type": "tertiary", "request": "not json",
    "body": "[", "version": "-1", "kubeconfig": "::", "context": "\x00", "settings": "a",
    "namespace": "Not_A_Namespace", "type": "nothing", "role": "emperor", "username": "nobody",
    "instance_count": "two", "mini_batch_size": "-3", "input": "../../etc/passwd",
    "nodeSelector": "=", "cpu": "lots", "memory": "-1Gi", "gpu": "half", "path": "/etc",
    "deployment": "nothing-here", "output_path": "ftp://x", "set": "a",
}  # fmt: skip
PAGE_VALUES = {"workspace": "demo", "name": "thing", "deployment": "thing", "version": "1",
               "output": "default", "path": "a.txt", "username": "carl", "token_id": "1",
               "experiment_id": "1", "instance_type": "thing"}  # fmt: skip


def pages() -> list[str]:
    """Every page route (the API and the admin are elsewhere), with its parameters
    named; those that delete, last."""
    from django.urls import URLResolver, get_resolver

    def walk(patterns: list[Any], prefix: str = "") -> Any:
        for each in patterns:
            if isinstance(each, URLResolver):
                yield from walk(each.url_patterns, prefix + str(each.pattern))
            else:
                yield prefix + str(each.pattern)

    found = [
        "/" + route for route in walk(get_resolver().url_patterns)
        if not route.startswith(("api/", "admin/", "static/", "logout/")) and "^" not in route
    ]  # fmt: skip
    return sorted(found, key=lambda route: "delete" in route or "uninstall" in route)


def fill_page(route: str, value: str | None) -> str:
    return re.sub(
        r"<(?:\w+:)?(\w+)>", lambda m: value or PAGE_VALUES.get(m.group(1), "runs/get"), route
    )


def test_no_page_answers_500_to_bad_input(api, people, workspace, client):
    made(api, people, workspace)
    client.raise_request_exception = False
    seen: list[str] = []
    for user in (people.owner, people.it_ops):
        client.force_login(user)
        for route in pages():
            for value in (None, "nothing-here", "x" * 300):
                path = fill_page(route, value)
                for method, data in (("get", {"limit": "x", "after": "-1", "page": "zz"}),
                                     ("post", FORM), ("post", {})):  # fmt: skip
                    answer = getattr(client, method)(path, data)
                    if answer.status_code >= 500:
                        seen.append(f"{method.upper()} {path} -> {answer.status_code}")
    assert not seen, "\n".join(seen)


# Writes a reader may make: none change the workspace (a validation, a scoring test).
READER_WRITES = {"POST /api/v1/workspaces/{workspace}/jobs/validate/"}


def test_every_workspace_route_by_role_strangers_see_nothing_readers_change_nothing(
    api, people, workspace
):
    """The role x route matrix, from the API's own schema: a stranger gets from every route
    of a workspace what a workspace that does not exist gives (404, or IT-ops' 403 on
    compute targets: nothing tells it exists), never 2xx; a reader's writes are all refused."""
    made(api, people, workspace)
    crossings: list[str] = []
    templates = [
        (m, t) for m, t in routes(api, people.owner)
        if t.startswith("/api/v1/workspaces/{workspace}/")
    ]  # fmt: skip
    assert len(templates) > 40
    checked = 0
    for user, role in ((people.stranger, "stranger"), (people.reader, "reader")):
        caller = api(user)
        caller.raise_request_exception = False
        for method, template in templates:
            if role == "reader" and (method == "GET" or f"{method} {template}" in READER_WRITES):
                continue
            path = fill(template, None)
            answer = caller.generic(method, path, data="{}", content_type="application/json")
            checked += 1
            if role == "stranger":
                elsewhere = caller.generic(method, path.replace("/demo/", "/no-such-ws/", 1),
                                           data="{}", content_type="application/json")  # fmt: skip
                refused = answer.status_code == elsewhere.status_code in (403, 404)
            else:
                refused = answer.status_code in (403, 404, 405)
            if not refused:
                crossings.append(f"{role}: {method} {template} -> {answer.status_code}")
    assert not crossings, "\n".join(crossings)
    assert checked > 90
