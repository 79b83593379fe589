"""Dynamic provisioning, as a cluster's default StorageClass gives it: a claim of class
`standard` (the default) gets a PersistentVolume of its own, a folder of the cluster's,
which every node sees since all nodes are this host; the controller manager binds the two.
When the claim goes, its volume is Released and this provisioner deletes it and its folder
(reclaim policy Delete), as cloud provisioners do."""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

from devcluster.api import Api, ApiError, informer

PROVISIONER = "devcluster.kube.test/host-path"
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "standard",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": PROVISIONER,
    "reclaimPolicy": "Delete",
    # All nodes share this host's disk, so where the first pod lands does not matter.
    "volumeBindingMode": "Immediate",
}
# What the controller manager's volume binder sets on a claim for an external provisioner.
CLAIM_PROVISIONER = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)


class Provisioner:
    def __init__(self, api: Api, folder: Path, stopped: threading.Event) -> None:
        self.api, self.folder = api, folder
        self.folder.mkdir(exist_ok=True)
        with contextlib.suppress(ApiError):  # already there: a restarted provisioner
            api.call("POST", "/apis/storage.k8s.io/v1/storageclasses", STORAGE_CLASS)
        informer(api, "/api/v1/persistentvolumeclaims", {}, self._claim, stopped, "claims")
        informer(api, "/api/v1/persistentvolumes", {}, self._volume, stopped, "volumes")

    def _claim(self, kind: str, claim: dict[str, Any]) -> None:
        meta, spec = claim["metadata"], claim.get("spec") or {}
        annotations = meta.get("annotations") or {}
        ours = any(annotations.get(key) == PROVISIONER for key in CLAIM_PROVISIONER)
        if kind == "DELETED" or not ours or spec.get("volumeName"):
            return
        name = f"pvc-{meta['uid']}"
        path = self.folder / name
        path.mkdir(exist_ok=True)
        path.chmod(0o777)  # any pod's user writes to its claim, as on a fresh disk)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "standard",
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        try:
            self.api.call("POST", "/api/v1/persistentvolumes", volume)
        except ApiError as exc:
            if exc.code != 409:  # made already, on an earlier event of the same claim
                raise

    def _volume(self, kind: str, volume: dict[str, Any]) -> None:
        meta, spec = volume["metadata"], volume.get("spec") or {}
        ours = (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by")
        released = (volume.get("status") or {}).get("phase") == "Released"
        if kind == "DELETED" or ours != PROVISIONER or not released:
            return
        if spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        shutil.rmtree(self.folder / meta["name"], ignore_errors=True)
        with contextlib.suppress(ApiError):  # gone already
            self.api.call(
                "DELETE",
                f"/api/v1/persistentvolumes/{meta['name']}",
                {"preconditions": {"uid": meta["uid"]}},
            )
