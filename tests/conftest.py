"""Shared fixtures: a seeded workspace, one user per role, API clients, a live studio."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from studio.access import IT_OPS_GROUP
from studio.models import ApiToken, Membership, Role, Workspace
from studio.services import set_up
from tests.live import LiveStudio

KUBERNETES_FIXTURES = {"kube", "real_kube", "dev_cluster", "faults"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the development cluster are marked `kubernetes`: server mode runs only
    those marked `both_modes` too (the backend talks to the cluster the same either way)."""
    for item in items:
        if KUBERNETES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kubernetes)


@pytest.fixture(autouse=True)
def studio_dirs(settings: Any, tmp_path: Any) -> None:
    # Jobs run as uids of their own when tests run as root: they must pass through
    # pytest's private temporary folders to reach theirs, as they pass through var/.
    for folder in [tmp_path, *tmp_path.parents]:
        if folder == Path(tempfile.gettempdir()):
            break
        folder.chmod(folder.stat().st_mode | 0o111)
    settings.STUDIO_JOBS_DIR = tmp_path / "jobs"
    # Rate-limit counts start afresh in each test (a key space of its own, on the real
    # cache of the mode: Redis in server mode).
    default = settings.CACHES["default"]
    settings.CACHES = {"default": {**default, "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }
    settings.STUDIO_DATASTORES_DIR = tmp_path / "datastores"
    settings.STUDIO_ENVIRONMENTS_DIR = tmp_path / "environments"
    settings.STUDIO_DEPLOYMENTS_DIR = tmp_path / "deployments"
    settings.STUDIO_CANCEL_GRACE_SECONDS = 2
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True, scope="session")
def pool_closed_before_the_test_database_is_dropped(
    django_db_setup: None, django_db_blocker: Any
) -> Iterator[None]:
    """Connections of threads that have ended are let go, then the pool is closed, so
    that dropping the test database finds nobody using it. A live studio's web thread
    stopped mid-request (its event loop gone) still holds one: its session is ended."""
    yield
    import gc

    from django.db import connections

    gc.collect()
    with django_db_blocker.unblock():
        for conn in connections.all():
            if conn.vendor == "postgresql":
                with conn.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
            if getattr(conn, "pool", None) is not None:
                conn.close_pool()


@pytest.fixture(autouse=True, scope="session")
def short_lived_connections() -> None:
    """The live server's threads must not keep connections that hold the test database."""
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture
async def async_db_thread() -> AsyncIterator[None]:
    """Async tests reach the ORM through asgiref's shared thread: close its connection after."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def no_stray_jobs() -> Iterator[None]:
    """Jobs run in sessions of their own (they outlive a studio restart); a test that
    stops early must not leave its job running after it."""
    yield
    from compute.backends.local import _children

    for pid in list(_children):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _children.pop(pid).wait()


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    yield
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.flush)()
    except RuntimeError:
        # Redis: flush deletes the test's keys, then closes every event loop's connections
        # from this one, which fails for a connection still bound to another loop (a
        # test's many short-lived loops; a server has one). The keys are gone by then:
        # the next test gets a new layer.
        channel_layers.backends.clear()


@pytest.fixture
def workspace(db: None) -> Workspace:
    ws = Workspace.objects.create(name="demo")
    set_up(ws)  # what every app gives a new workspace: a local compute, a datastore
    ws.refresh_from_db()
    return ws


class People:
    def __init__(self, workspace: Workspace) -> None:
        self.owner = self._member("olivia", workspace, Role.OWNER)
        self.contributor = self._member("carl", workspace, Role.CONTRIBUTOR)
        self.reader = self._member("rita", workspace, Role.READER)
        self.stranger = User.objects.create_user("sam", password="pw-sam-12345")
        self.it_ops = User.objects.create_user("ivan", password="pw-ivan-12345")
        self.it_ops.groups.add(Group.objects.get_or_create(name=IT_OPS_GROUP)[0])

    @staticmethod
    def _member(name: str, workspace: Workspace, role: str) -> User:
        user = User.objects.create_user(name, password=f"pw-{name}-12345")
        Membership.objects.create(workspace=workspace, user=user, role=role)
        return user


@pytest.fixture
def people(workspace: Workspace) -> People:
    return People(workspace)


def token_for(user: User) -> str:
    return ApiToken.issue(user, "test")[1]


@pytest.fixture
def api() -> Callable[[User | None], APIClient]:
    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")
        return client

    return make


def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll a condition until it holds (the thing awaited happens in another process)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_socket(
    url: str, token: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    """A websocket's messages, read as the CLI reads them (bearer token), until `until`
    holds for those read so far; TimeoutError if it does not within `timeout`."""
    from websockets.sync.client import connect

    read: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        while not until(read):
            read.append(json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic()))))
    return read


async def await_until(
    condition: Callable[[], Any], timeout: float = 30, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def code_archive(files: dict[str, bytes] | None = None) -> io.BytesIO:
    """A job's code snapshot as the CLI uploads it: a tar.gz, by default one main.py that
    prints its first argument's file in capitals."""
    files = files or {"main.py": b"import sys\nprint(open(sys.argv[1]).read().strip().upper())\n"}
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    code.seek(0)
    return code


@pytest.fixture
def live_studio(transactional_db: None) -> Iterator[LiveStudio]:
    studio = LiveStudio()
    studio.start()
    yield studio
    studio.close()


@pytest.fixture
def kstudio(live_studio: LiveStudio, people: People) -> Callable[..., Any]:
    """Run the CLI as a user would; keyword arguments override its environment."""
    base = dict(
        os.environ,
        KSTUDIO_URL=live_studio.url,
        KSTUDIO_TOKEN=token_for(people.contributor),
        KSTUDIO_WORKSPACE="demo",
    )

    def run(*args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "kstudio_cli", *args],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


@pytest.fixture(scope="session")
def s3_store() -> Iterator[dict[str, Any]]:
    """moto's S3 server over real HTTP, with a bucket (S3Storage's options)."""
    from tests import stores

    with stores.s3_server() as options:
        yield options


@pytest.fixture(scope="session")
def azure_store() -> Iterator[dict[str, Any]]:
    """Azurite's blob service, with a container (AzureStorage's options)."""
    from tests import stores

    with stores.azurite_server() as options:
        yield options


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[Any]:
    """The real control plane (devcluster: kube-apiserver, etcd, controller manager,
    scheduler) with the process kubelet's first node, for the whole session."""
    from tests.devkube import start_session

    cluster = start_session()
    yield cluster
    cluster.stop()


def _close_backends() -> None:
    # The studio's watches and log followers of a cluster end with the test, as the
    # process they would live in would.
    from compute import backends, instance_types

    instance_types.stop_following()
    with backends._lock:
        for backend in backends._built.values():
            backend.close()
        backends._built.clear()


@pytest.fixture
def real_kube(dev_cluster: Any) -> Iterator[Any]:
    """The session's real cluster, as this test finds it and leaves it: what the test
    made there is deleted at its end."""
    from tests.devkube import RealKube

    handle = RealKube(dev_cluster)
    yield handle
    _close_backends()
    handle.reset()


@pytest.fixture
def faults(real_kube: Any) -> Iterator[Any]:
    """The fault proxy in front of the real API server, given to the studio in place of
    the server itself (tests.faults): for 429, 500, dropped watches and 410 Gone."""
    from tests.faults import FaultProxy

    proxy = FaultProxy(real_kube.url, str(real_kube.cluster.control.ca.path)).start()
    real_kube.through(proxy)
    yield proxy
    proxy.stop()


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Any:
    """The real cluster (seen through the fault proxy by a test that asks for `faults`)."""
    if "faults" in request.fixturenames:
        request.getfixturevalue("faults")
    return request.getfixturevalue("real_kube")


def register(api: Any, user: Any, kube: Any, name: str = "lab", **extra: Any) -> Any:
    body = {"name": name, "kubeconfig": yaml.safe_dump(kube.kubeconfig()), **extra}
    return api(user).post("/api/v1/clusters/", body, format="json")


@pytest.fixture
def attached(api: Any, people: People, kube: Any, live_studio: LiveStudio) -> Any:
    """A cluster registered and attached to the demo workspace as `k8s` (namespace team-a),
    its extension installed: from then on the studio holds only the extension's token."""
    assert register(api, people.it_ops, kube, studio_url=live_studio.url).status_code == 201
    made = api(people.it_ops).post(
        "/api/v1/workspaces/demo/computes/",
        {"name": "k8s", "type": "kubernetes", "cluster": "lab", "namespace": "team-a",
         "create_namespace": True},
        format="json",
    )  # fmt: skip
    assert made.status_code == 201, made.content
    from compute.models import ComputeTarget

    # Installed, so that every flow runs with only the rights the extension grants.
    installed = api(people.it_ops).post("/api/v1/clusters/lab/install/", {}, format="json")
    assert installed.status_code == 200 and not installed.json()["problems"], installed.content
    return ComputeTarget.objects.get(name="k8s")


def admin_kubeconfig(kube: Any) -> str:
    """A cluster admin's kubeconfig, for the acts that change the studio's rights."""
    return yaml.safe_dump(kube.kubeconfig())
