"""The launch file for a launcher on a host that shares no disk with the studio (a pod):
the same launcher as the local compute's, told to fetch the job's uploads from the studio
and publish its outputs there with the job's token (see compute/launcher.py)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from compute.backends.base import LaunchSpec, launcher_bounds, tracking_variables


def remote_files(
    name: str, files: list[dict[str, Any]], volume: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """An input's files as a launcher elsewhere reads them: signed URLs as they are; files
    on the studio's host from the same storage mounted in the pod when IT-ops named its
    volume (`mounted`: beneath KSTUDIO_DATA/<input>), else through the studio."""
    found = []
    for f in files:
        if "source" not in f:
            found.append(f)
        elif volume is not None:
            beneath = os.path.relpath(f["source"], volume["root"])
            found.append({"path": f["path"], "size": f["size"], "mounted": f"{name}/{beneath}"})
        else:
            found.append({"path": f["path"], "size": f["size"],
                          "studio": f"inputs/{name}/files/{quote(f['path'])}"})  # fmt: skip
    return found


def launch_file(
    spec: LaunchSpec, root: str, studio_url: str, embedded: dict[str, str] | None = None
) -> dict[str, Any]:
    """What the launcher reads, for a job whose folder is `root` on its own host and whose
    studio answers at `studio_url` (as that host reaches it). `embedded` names the uploads
    (by key) that travel beside the launch file, under which file name."""
    embedded = embedded or {}

    def ref(key: str) -> dict[str, str]:
        return {"embedded": embedded[key]} if key in embedded else {"fetch": key}

    inputs: dict[str, dict[str, Any]] = {}
    for name, item in spec.inputs.items():
        if "artifact" in item:
            inputs[name] = {"type": item["type"], **ref(item["key"]), "filename": item["filename"]}
        elif "files" in item:
            # Asked for when the pod starts: fresh signatures, and none kept in the
            # cluster's objects (anyone who reads the namespace's ConfigMaps would read
            # the data for as long as they are valid).
            rest = {key: value for key, value in item.items() if key not in ("files", "volume")}
            inputs[name] = {**rest, "listing": f"inputs/{name}/files/"}
        else:
            inputs[name] = item  # literals and http(s) URLs need nothing of the studio
    return {
        "root": root,
        "name": spec.name,
        "command": spec.command,
        "code": ref(spec.code["key"]) if spec.code else None,
        "inputs": inputs,
        "outputs": spec.outputs,
        "environment_variables": tracking_variables(spec, studio_url),
        "environment": spec.environment,  # built under the job's folder (KSTUDIO_ROOT)
        "timeout": spec.timeout,
        "grace_seconds": spec.grace_seconds,
        **launcher_bounds(),
        "studio": {"url": studio_url, "token": spec.job_token},
    }
