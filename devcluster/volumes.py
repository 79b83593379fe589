"""A pod's volumes as folders of its sandbox, and what its env reads from the API: each
volume is made once under `<sandbox>/.volumes/<name>`, and each container's mountPath in
the sandbox links to it (a subPath to a folder in it). ConfigMaps and Secrets are read
with the node's identity, which the Node authorizer lets read only what a pod bound to
this node refers to; a service-account token is asked of the TokenRequest API, bound to
the pod, as a projected volume's `serviceAccountToken` says."""

from __future__ import annotations

import base64
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any

from devcluster.api import ApiError

if TYPE_CHECKING:
    from devcluster.kubelet import Kubelet
    from devcluster.pods import Pod

# How long a pod waits for a ConfigMap or Secret it names, as the kubelet retries a mount.
MOUNT_WAIT = 120.0


class Volumes:
    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet

    def mount(self, pod: Pod) -> dict[str, str]:
        """Makes the pod's volumes; returns container path -> local path."""
        spec = pod.pod["spec"]
        made: dict[str, str] = {}
        for volume in spec.get("volumes") or []:
            made[volume["name"]] = self._make(pod, volume)
        paths: dict[str, str] = {}
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            for mount in container.get("volumeMounts") or []:
                source = made[mount["name"]]
                if mount.get("subPath"):
                    source = os.path.join(source, mount["subPath"])
                    os.makedirs(source, exist_ok=True)
                local = os.path.join(pod.sandbox, mount["mountPath"].lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                if not os.path.lexists(local):
                    os.symlink(source, local)
                paths[mount["mountPath"]] = local
            termination = container.get("terminationMessagePath", "/dev/termination-log")
            paths.setdefault(termination, os.path.join(pod.sandbox, ".termination-log"))
        return paths

    def _make(self, pod: Pod, volume: dict[str, Any]) -> str:
        folder = os.path.join(pod.sandbox, ".volumes", volume["name"])
        if "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") == "Memory":
            # tmpfs, as the kubelet mounts a memory-backed emptyDir.
            shared = os.path.join("/dev/shm", f"devcluster-{pod.uid}-{volume['name']}")  # noqa: S108
            os.makedirs(shared, mode=0o777, exist_ok=True)
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            os.symlink(shared, folder)
            pod.cleanup.append(shared)
            return folder
        for kind in ("nfs", "hostPath"):
            if kind in volume:  # this host's folder of that path, as the mount would be
                return str(volume[kind]["path"])
        if "persistentVolumeClaim" in volume:
            return self._claimed(pod, volume["persistentVolumeClaim"]["claimName"])
        os.makedirs(folder, mode=0o777, exist_ok=True)
        os.chmod(folder, 0o777)  # noqa: S103 (as an emptyDir is, whoever the container runs as)
        mode = 0o644
        if "configMap" in volume or "secret" in volume:
            source = volume.get("configMap") or volume["secret"]
            plural = "configmaps" if "configMap" in volume else "secrets"
            name = source.get("name") or source.get("secretName")
            data = self.read(pod, plural, name, bool(source.get("optional")))
            mode = int(source.get("defaultMode", 0o644))
            self._files(folder, data, source.get("items"), mode)
        elif "downwardAPI" in volume:
            self._downward(pod, folder, volume["downwardAPI"].get("items") or [], mode)
        elif "projected" in volume:
            mode = int(volume["projected"].get("defaultMode", 0o644))
            for source in volume["projected"].get("sources") or []:
                self._project(pod, folder, source, mode)
        return folder

    def _claimed(self, pod: Pod, claim: str) -> str:
        """The bound PersistentVolume's folder on this host."""
        api = pod.node.api  # the Node authorizer lets it read its pods' claims and volumes
        found = api.call(
            "GET", f"/api/v1/namespaces/{pod.namespace}/persistentvolumeclaims/{claim}"
        )
        volume = (found.get("spec") or {}).get("volumeName")
        if not volume:
            raise ApiError(409, "Unbound", f"persistentvolumeclaim {claim} is not bound")
        spec = api.call("GET", f"/api/v1/persistentvolumes/{volume}")["spec"]
        for kind in ("hostPath", "local", "nfs"):
            if kind in spec:
                return str(spec[kind]["path"])
        raise ApiError(422, "Unsupported", f"persistentvolume {volume} has no local path")

    def _project(self, pod: Pod, folder: str, source: dict[str, Any], mode: int) -> None:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            body = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [token["audience"]] if token.get("audience") else None,
                    "expirationSeconds": int(token.get("expirationSeconds", 3607)),
                    "boundObjectRef": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "name": pod.name,
                        "uid": pod.uid,
                    },
                },
            }
            account = pod.pod["spec"].get("serviceAccountName") or "default"
            answer = pod.node.api.call(
                "POST",
                f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{account}/token",
                body,
            )
            self._files(folder, {token["path"]: answer["status"]["token"].encode()}, None, mode)
        for kind, plural in (("configMap", "configmaps"), ("secret", "secrets")):
            if kind in source:
                ref = source[kind]
                data = self.read(pod, plural, ref["name"], bool(ref.get("optional")))
                self._files(folder, data, ref.get("items"), mode)
        if "downwardAPI" in source:
            self._downward(pod, folder, source["downwardAPI"].get("items") or [], mode)

    def _downward(self, pod: Pod, folder: str, items: list[dict[str, Any]], mode: int) -> None:
        data = {}
        for item in items:
            if "fieldRef" in item:
                data[item["path"]] = self.field(pod, item["fieldRef"]["fieldPath"]).encode()
            elif "resourceFieldRef" in item:
                data[item["path"]] = self.resource(pod, item["resourceFieldRef"]).encode()
        self._files(folder, data, None, mode)

    @staticmethod
    def _files(folder: str, data: dict[str, bytes], items: list | None, mode: int) -> None:
        chosen = (
            {
                item["path"]: (data.get(item["key"], b""), int(item.get("mode", mode)))
                for item in items
            }
            if items
            else {key: (value, mode) for key, value in data.items()}
        )
        for path, (value, each_mode) in chosen.items():
            target = os.path.join(folder, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(value)
            os.chmod(target, each_mode)

    def read(self, pod: Pod, plural: str, name: str, optional: bool) -> dict[str, bytes]:
        """A ConfigMap's or Secret's data; waited for (its owner may make it just after the
        pod), as the kubelet retries a mount, unless optional."""
        deadline = time.monotonic() + MOUNT_WAIT
        while True:
            try:
                found = pod.node.api.call(
                    "GET", f"/api/v1/namespaces/{pod.namespace}/{plural}/{name}"
                )
                break
            except ApiError as exc:
                if exc.code not in (403, 404):
                    raise
                # 403: the Node authorizer has not yet seen the pod's reference to it.
                if (optional and exc.code == 404) or time.monotonic() > deadline:
                    if optional:
                        return {}
                    raise
                if pod.deleting.wait(0.2):
                    raise
        if plural == "secrets":
            return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (found.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()})
        return data

    def field(self, pod: Pod, path: str) -> str:
        """The Downward API's fieldRef. The pod's own address is where it listens on this
        host (its loopback address): what a pod sees of itself in its network namespace."""
        meta, spec = pod.pod["metadata"], pod.pod["spec"]
        own = self.kubelet.addresses.host(pod.address) if pod.address else ""
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": pod.node.address,
            "status.hostIPs": pod.node.address,
            "status.podIP": own,
            "status.podIPs": own,
        }
        if path in simple:
            return simple[path]
        for kind in ("labels", "annotations"):
            values = meta.get(kind) or {}
            if path == f"metadata.{kind}":
                return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))
            if path.startswith(f"metadata.{kind}["):
                return str(values.get(path[len(kind) + 11 : -2], ""))
        return ""

    def resource(self, pod: Pod, ref: dict[str, Any]) -> str:
        """The resourceFieldRef: a container's limit or request (no limit: the node's
        allocatable), in units of the divisor, rounded up as the kubelet does."""
        from devcluster.pods import quantity

        containers = pod.pod["spec"]["containers"]
        container = next(
            (c for c in containers if c["name"] == ref.get("containerName")), containers[0]
        )
        group, _, name = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(group) or {}).get(name)
        amount = quantity(value) if value else quantity(pod.node.allocatable.get(name, "0"))
        divisor = quantity(ref.get("divisor") or "1")
        return str(max(1, math.ceil(amount / divisor)) if amount else 0)
