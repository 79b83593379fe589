"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler, the real programs
(built by devcluster/build.sh), started on loopback in a folder of their own.

Addresses. Every listener is on this host's loopback network. Services' cluster IPs are
loopback addresses too (a /16 of 127/8 of the cluster's own), so that the process
kubelet's kube-proxy can listen on them. Pods' addresses cannot be: the API server
refuses loopback addresses in EndpointSlices and will not proxy to them, as on any
cluster. So pods get their addresses from the node CIDRs the controller manager allocates
(in 10.244.0.0/16, as kind and flannel give them), and the API server reaches them through
its egress selector, the HTTP CONNECT tunnel a cluster like GKE's sends pod and node
traffic through (konnectivity): the process kubelet serves that tunnel and connects each
pod address to the loopback address where that pod's processes really listen.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster.pki import Authority, Pair, signing_keys

HERE = Path(__file__).resolve().parent
POD_CIDR = "10.244.0.0/17"  # nodes listen in 127.b.200.0/24 (network.Addresses)
# A process this kubelet starts dies with the process that started it, even on SIGKILL.
# The API server's audit log records clients' requests, once each (a watch when it starts),
# but not those of the cluster's own parts: nodes, controllers, scheduler, kube-proxy.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "Panic"],
    "rules": [
        {
            "level": "None",
            "users": [
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:kube-proxy",
                "system:apiserver",
            ],
        },
        {
            "level": "None",
            "userGroups": ["system:nodes", "system:serviceaccounts:kube-system"],
        },
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}
DEATH = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


class StartError(RuntimeError):
    """The control plane did not come up; the message says which part and why."""


def build() -> Path:
    """The folder of the built binaries (building them first when needed)."""
    done = subprocess.run(
        ["bash", str(HERE / "build.sh")], capture_output=True, text=True, check=False
    )
    sys.stderr.write(done.stderr)  # what it built, and how long it took
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.startswith("ERROR: ")]
        raise StartError(said[-1] if said else "building the Kubernetes control plane failed")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_block() -> int:
    """A second octet of 127/8 that nothing on this host listens in: the cluster's own, so
    that two clusters on one machine (a person's and CI's) never share an address."""
    listening = set()
    for table in ("/proc/net/tcp",):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                local = line.split()[1].split(":")[0]
                listening.add(int(local[-4:-2], 16) if len(local) == 8 else -1)
    for octet in range(100, 250, 2):
        if octet not in listening and octet + 1 not in listening:
            return octet
    raise StartError("no free 127.x.0.0/16 block for a cluster on this host")


def kubeconfig(server: str, ca: bytes, client: Pair | None = None, token: str = "") -> dict:
    """A kubeconfig with everything inline (it can be copied as it is)."""
    user: dict[str, str] = {}
    if client is not None:
        user = {
            "client-certificate-data": base64.b64encode(client.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(client.key.read_bytes()).decode(),
        }
    if token:
        user = {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devcluster",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": "devcluster", "user": user}],
        "contexts": [
            {"name": "devcluster", "context": {"cluster": "devcluster", "user": "devcluster"}}
        ],
        "current-context": "devcluster",
    }


@dataclass
class ControlPlane:
    folder: Path
    binaries: Path = field(default_factory=build)
    block: int = field(default_factory=free_block)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    ca: Authority | None = None
    # Set by the kubelet before start: where the API server's egress tunnel listens.
    tunnel: Path | None = None

    @property
    def service_cidr(self) -> str:
        return f"127.{self.block}.0.0/16"

    @property
    def node_network(self) -> str:
        """The loopback /16 where nodes and pods really listen (see the module's text)."""
        return f"127.{self.block + 1}"

    @property
    def audit_log(self) -> Path:
        """One JSON line per request of a client that is not the cluster's own (see
        AUDIT_POLICY): how tests and benchmarks count a client's requests."""
        return self.folder / "audit.log"

    @property
    def admin(self) -> Path:
        return self.folder / "admin.kubeconfig"

    def start(self, timeout: float = 60) -> None:
        pki = self.folder / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.ca = ca = Authority(pki)
        sa_key, sa_pub = signing_keys(pki)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        kcm_port, scheduler_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{api_port}"
        first_service = f"127.{self.block}.0.1"
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                first_service,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        to_kubelets = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        )
        self.write_kubeconfig(
            self.admin, ca.issue("admin", "kubernetes-admin", ("system:masters",))
        )
        kcm_serving = ca.issue(
            "controller-manager-serving", "kube-controller-manager", hosts=("127.0.0.1",)
        )
        scheduler_serving = ca.issue("scheduler-serving", "kube-scheduler", hosts=("127.0.0.1",))
        kcm = self.write_kubeconfig(
            self.folder / "controller-manager.kubeconfig",
            ca.issue("controller-manager", "system:kube-controller-manager"),
        )
        scheduler = self.write_kubeconfig(
            self.folder / "scheduler.kubeconfig", ca.issue("scheduler", "system:kube-scheduler")
        )
        audit = self.folder / "audit-policy.yaml"
        audit.write_text(yaml.safe_dump(AUDIT_POLICY))
        egress = self.folder / "egress.yaml"
        assert self.tunnel is not None, "the kubelet's tunnel comes first"
        egress.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.tunnel)}},
                            },
                        }
                    ],
                }
            )
        )
        self.spawn(
            "etcd",
            [
                "--name",
                "devcluster",
                "--data-dir",
                str(self.folder / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"devcluster=http://127.0.0.1:{peer_port}",
                # A dev cluster's data dies with it: no fsync, no waiting on the disk.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self.spawn(
            "kube-apiserver",
            [
                "--etcd-servers",
                f"http://127.0.0.1:{etcd_port}",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(api_port),
                "--advertise-address",
                "127.0.0.1",
                # The `kubernetes` Service's endpoints would be the loopback address, which
                # EndpointSlices refuse; the kubelet's kube-proxy knows where the server is.
                "--endpoint-reconciler-type",
                "none",
                "--tls-cert-file",
                str(serving.cert),
                "--tls-private-key-file",
                str(serving.key),
                "--client-ca-file",
                str(ca.path),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(sa_pub),
                "--service-account-signing-key-file",
                str(sa_key),
                "--service-cluster-ip-range",
                self.service_cidr,
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",
                "--kubelet-client-certificate",
                str(to_kubelets.cert),
                "--kubelet-client-key",
                str(to_kubelets.key),
                "--kubelet-certificate-authority",
                str(ca.path),
                "--kubelet-preferred-address-types",
                "InternalIP",
                "--egress-selector-config-file",
                str(egress),
                "--audit-policy-file",
                str(audit),
                "--audit-log-path",
                str(self.audit_log),
                # A cluster left running for days keeps its log bounded; a test session
                # writes a few tens of MB, far from a rotation that would move its offsets.
                "--audit-log-maxsize",
                "256",
                "--audit-log-maxbackup",
                "1",
                "--profiling=false",
            ],
        )
        self.wait(self.url + "/readyz", "kube-apiserver", timeout)
        self.spawn(
            "kube-controller-manager",
            [
                "--kubeconfig",
                str(kcm),
                "--authentication-kubeconfig",
                str(kcm),
                "--authorization-kubeconfig",
                str(kcm),
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(kcm_port),
                "--tls-cert-file",
                str(kcm_serving.cert),
                "--tls-private-key-file",
                str(kcm_serving.key),
                "--service-account-private-key-file",
                str(sa_key),
                "--root-ca-file",
                str(ca.path),
                "--use-service-account-credentials",
                "--controllers",
                "*",
                "--cluster-signing-cert-file",
                str(ca.path),
                "--cluster-signing-key-file",
                str(pki / "ca.key"),
                "--allocate-node-cidrs",
                "--cluster-cidr",
                POD_CIDR,
                "--node-cidr-mask-size",
                "24",
                "--service-cluster-ip-range",
                self.service_cidr,
                "--leader-elect=false",
                "--profiling=false",
                # A thousand jobs at once (bench/k8s_jobs.py): the default 20 requests a second
                # would be the controllers' limit, not the API server's.
                "--kube-api-qps",
                "300",
                "--kube-api-burst",
                "600",
                "--concurrent-job-syncs",
                "20",
            ],
        )
        config = self.folder / "scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(scheduler), "qps": 300, "burst": 600},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self.spawn(
            "kube-scheduler",
            [
                "--config",
                str(config),
                "--authentication-kubeconfig",
                str(scheduler),
                "--authorization-kubeconfig",
                str(scheduler),
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(scheduler_port),
                "--tls-cert-file",
                str(scheduler_serving.cert),
                "--tls-private-key-file",
                str(scheduler_serving.key),
            ],
        )
        self.wait(f"https://127.0.0.1:{kcm_port}/healthz", "kube-controller-manager", timeout)
        self.wait(f"https://127.0.0.1:{scheduler_port}/healthz", "kube-scheduler", timeout)

    def write_kubeconfig(self, path: Path, client: Pair) -> Path:
        assert self.ca is not None
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.ca.pem, client)))
        path.chmod(0o600)
        return path

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (the child's)
        self.processes[name] = subprocess.Popen(
            [*DEATH, str(self.binaries / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,
        )
        log.close()

    def wait(self, url: str, name: str, timeout: float) -> None:
        """Until `url` answers 200, or `name` exits (with its log's last lines)."""
        assert self.ca is not None
        context = ssl.create_default_context(cafile=str(self.ca.path))
        admin = self.folder / "pki"
        context.load_cert_chain(admin / "admin.crt", admin / "admin.key")
        deadline = time.monotonic() + timeout
        while True:
            for each, process in self.processes.items():
                if process.poll() is not None:
                    raise StartError(f"{each} exited ({process.returncode}): {self.tail(each)}")
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StartError(f"{name} was not ready in {timeout:.0f} s: {self.tail(name)}")
            time.sleep(0.1)

    def tail(self, name: str, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = (self.folder / f"{name}.log").read_text(errors="replace").strip()
            return " | ".join(text.splitlines()[-lines:])
        return "(no log)"

    def stop(self, grace: float = 10) -> None:
        """The controllers first, etcd last (the API server writes to it until it ends)."""
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
