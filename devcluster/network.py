"""The cluster's network on this host's loopback (see controlplane's text for why pods'
addresses are 10.244.x.y in the API and 127.b.x.y on this host):

- `host_address`: where a cluster address really listens.
- `Tunnel`: the API server's egress (HTTP CONNECT on a unix socket): pods/log, service
  and pod proxies reach kubelets and pods through it.
- `Proxy`: kube-proxy. Each Service's cluster IP (and each node's address, for a NodePort)
  listens on its ports; a connection goes to one of the ready endpoints the real
  EndpointSlice controller lists, in turn. A LoadBalancer gets its cluster IP as its
  external address, as a bare-metal load balancer (MetalLB, kind's) would give one.
- cluster DNS: Services' names, and the pods that headless Services name (an Indexed
  Job's), in a hosts file that pods' processes resolve with through nss_wrapper.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import itertools
import os
import socket
import threading
from typing import Any

from devcluster.api import Api, ApiError, informer

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
# Makes a process resolve host names from a hosts file of its own (Debian: libnss-wrapper).
NSS_WRAPPER = next(iter(glob.glob("/usr/lib/*/libnss_wrapper.so")), "")


class Addresses:
    """Cluster addresses and the loopback ones behind them: pod 10.244.k.m is 127.b.k.m
    (b: the cluster's own octet); node n is 127.b.200.n."""

    def __init__(self, octet: int) -> None:
        self.octet = octet

    def host(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        if ip in POD_NETWORK:
            _, _, k, m = str(ip).split(".")
            return f"127.{self.octet}.{k}.{m}"
        if ip.is_loopback:
            return address
        raise ValueError(f"{address} is not an address of this cluster")

    def node(self, index: int) -> str:
        return f"127.{self.octet}.200.{index + 1}"


class Tunnel:
    """The API server's egress selector: `CONNECT <address>:<port>` on a unix socket, each
    tunnel a socket to the address on this host."""

    def __init__(self, path: str, addresses: Addresses) -> None:
        self.path = path
        self.addresses = addresses
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        os.chmod(path, 0o600)
        self.server.listen(128)
        threading.Thread(target=self._accept, daemon=True, name="egress-tunnel").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            request += chunk
        head, _, rest = request.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        try:
            if len(parts) < 2 or parts[0] != b"CONNECT":
                raise ValueError("not a CONNECT")
            host, _, port = parts[1].decode().rpartition(":")
            upstream = socket.create_connection(
                (self.addresses.host(host.strip("[]")), int(port)), timeout=10
            )
        except (OSError, ValueError) as exc:
            client.sendall(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
            client.close()
            return
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        splice(client, upstream)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Proxy:
    """kube-proxy, and the cluster's DNS, from Services and EndpointSlices."""

    def __init__(
        self,
        api: Api,
        balancer: Api,
        addresses: Addresses,
        apiserver: tuple[str, int],
        dns_file: str,
        stopped: threading.Event,
    ) -> None:
        self.api, self.balancer, self.addresses = api, balancer, addresses
        self.apiserver = apiserver
        self.dns_file = dns_file
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[str, dict[str, Any]] = {}  # by uid
        self.listeners: dict[tuple[str, str], list[socket.socket]] = {}
        self.opened: dict[tuple[str, str], str] = {}  # what each Service's listeners serve
        self.node_addresses: list[str] = []
        self.turns = itertools.count()
        self.lock = threading.RLock()
        with open(dns_file, "w"):
            pass  # nss_wrapper complains of a missing one in every process
        informer(api, "/api/v1/services", {}, self._service, stopped, "kube-proxy-services")
        informer(
            api,
            "/apis/discovery.k8s.io/v1/endpointslices",
            {},
            self._slice,
            stopped,
            "kube-proxy-endpointslices",
        )

    # -- Services ---------------------------------------------------------------------------
    def _service(self, kind: str, service: dict[str, Any]) -> None:
        meta, spec = service["metadata"], service.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        with self.lock:
            if kind == "DELETED":
                self.services.pop(key, None)
                self._close(key)
            else:
                self.services[key] = service
                served = repr(
                    [
                        spec.get("clusterIP"),
                        spec.get("ports"),
                        spec.get("type"),
                        self.node_addresses,
                    ]
                )
                if self.opened.get(key) != served:
                    self._close(key)
                    self._open(service)
                    self.opened[key] = served
            self._write_dns()
        if kind != "DELETED" and spec.get("type") == "LoadBalancer":
            self._balance(service)

    def _open(self, service: dict[str, Any]) -> None:
        meta, spec = service["metadata"], service["spec"]
        key = (meta["namespace"], meta["name"])
        address = spec.get("clusterIP")
        if not address or address == "None":
            return
        pairs = [(address, port["port"], port) for port in spec.get("ports") or []]
        for port in spec.get("ports") or []:
            if port.get("nodePort"):
                pairs += [(node, port["nodePort"], port) for node in self.node_addresses]
        listeners = []
        for host, number, port in pairs:
            try:
                listener = socket.create_server((host, int(number)), reuse_port=False)
            except OSError as exc:
                print(f"devcluster: kube-proxy cannot listen on {host}:{number}: {exc}", flush=True)
                continue
            listeners.append(listener)
            threading.Thread(
                target=self._accept,
                args=(listener, key, port),
                daemon=True,
                name=f"kube-proxy {host}:{number}",
            ).start()
        self.listeners[key] = listeners

    def _close(self, key: tuple[str, str]) -> None:
        self.opened.pop(key, None)
        for listener in self.listeners.pop(key, []):
            # Wakes the thread in accept(): a socket closed under it stays bound until then.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def nodes_changed(self, addresses: list[str]) -> None:
        """Node ports answer on every node's address: listeners made again for new nodes."""
        with self.lock:
            self.node_addresses = sorted(addresses)
            for service in list(self.services.values()):
                self._service("MODIFIED", service)

    def _balance(self, service: dict[str, Any]) -> None:
        address = service["spec"].get("clusterIP")
        wanted = {"ingress": [{"ip": address, "ipMode": "VIP"}]}
        if (service.get("status") or {}).get("loadBalancer") == wanted:
            return
        meta = service["metadata"]
        with contextlib.suppress(ApiError):
            self.balancer.merge(
                f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status",
                {"status": {"loadBalancer": wanted}},
            )

    # -- endpoints --------------------------------------------------------------------------
    def _slice(self, kind: str, endpoint_slice: dict[str, Any]) -> None:
        with self.lock:
            if kind == "DELETED":
                self.slices.pop(endpoint_slice["metadata"]["uid"], None)
            else:
                self.slices[endpoint_slice["metadata"]["uid"]] = endpoint_slice
            self._write_dns()

    def endpoints(self, key: tuple[str, str], port: dict[str, Any]) -> list[tuple[str, int]]:
        """The ready endpoints of the Service's port, as host addresses."""
        namespace, name = key
        if key == ("default", "kubernetes"):
            return [self.apiserver]
        found = []
        with self.lock:
            slices = [
                s
                for s in self.slices.values()
                if s["metadata"]["namespace"] == namespace
                and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
            ]
        for each in slices:
            number = next(
                (
                    p.get("port")
                    for p in each.get("ports") or []
                    if p.get("name", "") == port.get("name", "")
                ),
                None,
            )
            if number is None:
                continue
            for endpoint in each.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for address in endpoint.get("addresses") or []:
                    with contextlib.suppress(ValueError):
                        found.append((self.addresses.host(address), int(number)))
        return found

    def _accept(self, listener: socket.socket, key: tuple[str, str], port: dict) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the Service went
            ready = self.endpoints(key, port)
            upstream = None
            for _ in ready:
                target = ready[next(self.turns) % len(ready)]
                try:
                    upstream = socket.create_connection(target, timeout=5)
                    break
                except OSError:
                    continue
            if upstream is None:
                client.close()  # no endpoints: refused, as kube-proxy's REJECT rule does
                continue
            upstream.settimeout(None)
            threading.Thread(target=splice, args=(client, upstream), daemon=True).start()

    # -- DNS --------------------------------------------------------------------------------
    def _write_dns(self) -> None:
        lines = []
        for (namespace, name), service in self.services.items():
            address = (service.get("spec") or {}).get("clusterIP")
            if address and address != "None":
                lines.append(f"{address} {_names(name, namespace)}")
        for each in self.slices.values():
            owner = (each["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            for endpoint in each.get("endpoints") or []:
                if not (endpoint.get("hostname") and owner and endpoint.get("addresses")):
                    continue
                with contextlib.suppress(ValueError):
                    address = self.addresses.host(endpoint["addresses"][0])
                    short = f"{endpoint['hostname']}.{owner}"
                    lines.append(f"{address} {_names(short, each['metadata']['namespace'])}")
        text = "".join(line + "\n" for line in lines)
        with open(self.dns_file + ".new", "w") as hosts:
            hosts.write(text)
        os.replace(self.dns_file + ".new", self.dns_file)  # read whole, or not at all

    def close(self) -> None:
        with self.lock:
            for key in list(self.listeners):
                self._close(key)


def _names(short: str, namespace: str) -> str:
    return (
        f"{short} {short}.{namespace} {short}.{namespace}.svc {short}.{namespace}.svc.cluster.local"
    )


def splice(client: socket.socket, upstream: socket.socket) -> None:
    """A proxied connection: both directions, then both sockets closed."""
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """One direction of a proxied connection, until either side closes it."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)
