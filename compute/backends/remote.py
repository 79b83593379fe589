"""The launch file for a launcher on a host that shares no disk with the studio (a pod):
the same launcher as the local compute's, told to fetch the job's uploads from the studio
and publish its outputs there with the job's token (see compute/launcher.py)."""

from __future__ import annotations

from typing import Any

from compute.backends.base import LaunchSpec, launcher_bounds


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
        else:
            inputs[name] = item  # literals and http(s) URLs need nothing of the studio
    return {
        "root": root,
        "name": spec.name,
        "command": spec.command,
        "code": ref(spec.code["key"]) if spec.code else None,
        "inputs": inputs,
        "outputs": spec.outputs,
        "environment_variables": spec.environment_variables,
        "timeout": spec.timeout,
        "grace_seconds": spec.grace_seconds,
        **launcher_bounds(),
        "studio": {"url": studio_url, "token": spec.job_token},
    }
