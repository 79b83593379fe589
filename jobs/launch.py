"""What a compute is told about a job (`LaunchSpec`): built from the stored job, by the
controller to start it and by `job validate` to show what it would start."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from django.conf import settings

from compute.backends import LaunchSpec
from data import services as data_services
from jobs import tokens
from jobs.models import Job
from jobs.spec import CommandJob, InlineEnvironment, parse


class DataProblem(ValueError):
    """An input's data cannot be read now (gone, or the storage refuses): the job fails
    with this, naming the input."""


# Modes the computes here cannot do as Azure does (a FUSE mount): the files are downloaded.
MOUNT_MODES = {"ro_mount", "rw_mount", "eval_mount"}


def launch_spec(job: Job) -> LaunchSpec:
    spec = parse(dict(job.spec))
    inputs: dict[str, dict[str, Any]] = {
        name: {"type": "literal", "value": value} for name, value in spec.literal_values().items()
    }
    for name, item in spec.data_inputs().items():
        # The launcher knows files and folders; an MLTable is a folder holding one.
        kind = "uri_file" if item.type == "uri_file" else "uri_folder"
        if name in job.data_inputs:
            inputs[name] = _data_input(job, name, kind, item.mode)
        elif item.path.lower().startswith(("http://", "https://")):
            inputs[name] = {"type": kind, "url": item.path}
        else:
            inputs[name] = {"type": kind, **_uploaded(job, f"inputs.{name}")}
    code = _uploaded(job, "code") if spec.code else None
    resources = job.resources or {}
    return LaunchSpec(
        job_key=f"{job.workspace_id}/{job.name}",
        job_id=job.pk,
        name=job.name,
        command=spec.command,
        code=code,
        inputs=inputs,
        outputs={name: {"type": "uri_folder"} for name in spec.outputs},
        # Every job is an MLflow run: the stock client in it logs there with no change.
        environment_variables={
            **tracking_variables(job),
            **{k: str(v) for k, v in spec.environment_variables.items()},
        },
        tracking_path=f"/workspaces/{job.workspace.name}/mlflow",
        timeout=spec.limits.timeout,
        requests=dict(resources.get("requests") or {}),
        limits=dict(resources.get("limits") or {}),
        node_selector=dict(resources.get("node_selector") or {}),
        grace_seconds=float(settings.STUDIO_CANCEL_GRACE_SECONDS),
        job_token=tokens.token_for(job),
        image=job.environment_used.get("image") or _image(spec),
        environment=_environment(job),
        build=_build(job),
        shm_size=spec.resources.shm_size or "2g",
        labels={
            "kstudio.io/workspace": label_value(job.workspace.name),
            "kstudio.io/job-name": label_value(job.name),
            "kstudio.io/compute": label_value(job.compute_name or ""),
        },
        instance_count=spec.resources.instance_count,
        distribution=spec.distribution.model_dump(exclude_none=True) if spec.distribution else None,
    )


def _data_input(job: Job, name: str, kind: str, mode: str | None) -> dict[str, Any]:
    """What the launcher needs to bring a datastore path: each file and how to read it."""
    try:
        location = data_services.locate(job.workspace, job.data_inputs[name]["uri"])
        assert location is not None
        if mode == "direct":  # the job reads it itself
            return {"type": "literal", "value": data_services.native_url(location)}
        if location.url:
            return {"type": kind, "url": location.url}
        files, _folder = data_services.files_of(location, kind)
    except ValueError as exc:
        raise DataProblem(f"inputs.{name}: {exc}") from exc
    notes = []
    if mode in MOUNT_MODES:
        notes.append(f"{mode} is not available on this compute; downloading the files instead")
    item = {"type": kind, "files": files, "uri": location.uri, "notes": notes}
    volume = data_services.volume_of(location)
    return {**item, "volume": volume} if volume else item


def tracking_variables(job: Job) -> dict[str, str]:
    return {
        "MLFLOW_RUN_ID": job.run_id,
        "MLFLOW_EXPERIMENT_NAME": job.experiment_name,
        # The job's own token: it writes this run only (tracking.rest).
        "MLFLOW_TRACKING_TOKEN": tokens.token_for(job),
    }


def label_value(text: str) -> str:
    """A Kubernetes label value (63 characters of [A-Za-z0-9._-], alphanumeric at both
    ends); a longer name keeps its start and a hash of the whole."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-._")
    if len(cleaned) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = cleaned[:54].rstrip("-._") + "-" + digest
    return cleaned


def _environment(job: Job) -> dict[str, Any] | None:
    """What the launcher installs before the command: a conda file's packages, a curated
    stand-in's (on the local compute only when IT-ops asks: STUDIO_LOCAL_CURATED=build)."""
    used = job.environment_used or {}
    if not used:
        return None
    notes = list(used.get("notes", []))
    requirements = list(used.get("requirements", []))
    if used.get("curated") and job.compute_kind == "local" and not settings.STUDIO_LOCAL_CURATED:
        notes.append(
            "on the local compute it runs in the host's Python (STUDIO_LOCAL_CURATED=1 "
            "installs its packages instead)"
        )
        requirements = []
    if not requirements and not used.get("python"):
        return {"label": used["label"], "notes": notes} if notes else None
    return {
        "label": used["label"],
        "key": used["key"],
        "python": used.get("python"),
        "requirements": requirements,
        "notes": notes,
    }


def _build(job: Job) -> dict[str, Any] | None:
    used = job.environment_used or {}
    if not used.get("build"):
        return None
    return {
        "artifact": used["build"]["context"],
        "dockerfile_path": used["build"]["dockerfile_path"],
        "hash": used["build"]["hash"],
        "label": used["label"],
    }


def _image(spec: CommandJob) -> str:
    """An inline environment's image (jobs submitted before environments were resolved)."""
    environment = spec.environment
    return (environment.image or "") if isinstance(environment, InlineEnvironment) else ""


def _uploaded(job: Job, key: str) -> dict[str, str]:
    """An upload as the backend fetches it: its artifact, or (jobs submitted before the
    artifact store) a file on the studio's host."""
    if key in (job.uploads or {}):
        return {**job.uploads[key], "key": key}
    folder = Path(job.upload_dir)
    filename = folder / f"{key}.filename"
    return {
        "path": str(folder / key),
        "filename": filename.read_text() if filename.exists() else "",
    }
