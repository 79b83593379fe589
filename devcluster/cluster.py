"""A whole dev cluster: the real control plane (devcluster.controlplane), the process
kubelet's nodes, kube-proxy, the API server's egress tunnel and a default StorageClass's
provisioner, in one temp folder that goes when it stops. `make cluster` and the tests'
session fixture both start one."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from devcluster.api import Api, ApiError
from devcluster.controlplane import ControlPlane, build
from devcluster.kubelet import Images, Kubelet, Node, wait
from devcluster.network import Addresses, Proxy, Tunnel
from devcluster.pki import Pair
from devcluster.storage import Provisioner


class DevCluster:
    def __init__(
        self,
        folder: Path | None = None,
        backoff: float = 10.0,
        entrypoints: dict[str, list[str]] | None = None,
    ) -> None:
        self.owned = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="kstudio-cluster-"))
        self.folder.chmod(0o755)
        self.binaries = build()
        self.control = ControlPlane(self.folder, binaries=self.binaries)
        self.addresses = Addresses(self.control.block + 1)
        self.registry = self.folder / "registry"
        self.registry.mkdir(exist_ok=True)
        self.images = Images(self.registry, entrypoints=dict(entrypoints or {}))
        self.backoff = backoff
        self.stopped = threading.Event()
        self.tunnel: Tunnel | None = None
        self.proxy: Proxy | None = None
        self.kubelet: Kubelet | None = None
        self.admin_api: Api | None = None

    @property
    def kubeconfig_path(self) -> Path:
        return self.control.admin

    def kubeconfig(self) -> dict[str, Any]:
        """The admin kubeconfig (system:masters), everything inline."""
        return dict(yaml.safe_load(self.control.admin.read_text()))

    @property
    def api(self) -> Api:
        assert self.admin_api is not None, "start() first"
        return self.admin_api

    def start(self, nodes: int = 3, timeout: float = 60) -> DevCluster:
        started = time.monotonic()
        self.control.tunnel = self.folder / "egress.sock"
        self.tunnel = Tunnel(str(self.control.tunnel), self.addresses)
        try:
            self.control.start(timeout)
            ca = self.control.ca
            assert ca is not None
            pki = self.folder / "pki"
            self.admin_api = Api(
                self.control.url, str(ca.path), Pair(pki / "admin.crt", pki / "admin.key")
            )
            version = self.binaries.name
            self.kubelet = Kubelet(
                self.control.url,
                ca,
                self.folder,
                self.addresses,
                self.images,
                version,
                self.backoff,
            )
            proxier = Api(
                self.control.url, str(ca.path), ca.issue("kube-proxy", "system:kube-proxy")
            )
            port = int(self.control.url.rsplit(":", 1)[1])
            self.proxy = Proxy(
                proxier,
                self.api,
                self.addresses,
                ("127.0.0.1", port),
                self.kubelet.dns_file,
                self.stopped,
            )
            kubernetes = wait(
                lambda: self._get("/api/v1/namespaces/default/services/kubernetes"),
                timeout,
                "the kubernetes Service",
            )
            self.kubelet.service_host = kubernetes["spec"]["clusterIP"]
            Provisioner(self.api, self.folder / "volumes", self.stopped)
            for index in range(nodes):
                self.add_node(f"node-{index + 1}")
            # Pods need the namespace's default ServiceAccount (made by the controller
            # manager) before any can be created.
            wait(
                lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default"),
                timeout,
                "the default ServiceAccount",
            )
        except BaseException:
            self.stop()
            raise
        self.ready_in = time.monotonic() - started
        return self

    def add_node(self, name: str, **options: Any) -> Node:
        """A node of the process kubelet (labels, taints, cpu, memory, gpus, pods); returns
        once the Node is Ready with its pod CIDR."""
        assert self.kubelet is not None and self.proxy is not None
        node = self.kubelet.add_node(name, **options)
        node.cidr()
        self.proxy.nodes_changed([n.address for n in self.kubelet.nodes.values()])
        return node

    def remove_node(self, name: str) -> None:
        """The node's kubelet stops (its pods killed) and its Node goes."""
        assert self.kubelet is not None and self.proxy is not None
        self.kubelet.remove_node(name)
        with contextlib.suppress(ApiError):
            self.api.call("DELETE", f"/api/v1/nodes/{name}")
        self.proxy.nodes_changed([n.address for n in self.kubelet.nodes.values()])

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.api.call("GET", path)
        except (ApiError, OSError):
            return None

    def stop(self) -> None:
        self.stopped.set()
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.control.stop()
        if self.tunnel is not None:
            self.tunnel.close()
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)
