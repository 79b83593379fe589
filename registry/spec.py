"""Model documents as Azure ML's CLI v2 YAML writes them (model.schema.json), and the
sources a model version is registered from. Pure: no database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, StrictStr, field_validator

from studio.documents import NAME_PATTERN, DocumentError, Strict, asset_version, validate

REFUSED = {
    "azureml://registries/": "registry references (azureml://registries/...) are not supported; "
    "register the model in this workspace",
}


class ModelDocument(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
    version: StrictStr | int | None = None
    type: Literal["custom_model", "mlflow_model", "triton_model"] = "custom_model"
    path: StrictStr
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    stage: StrictStr | None = None  # Azure's free-form stage ("Development", ...)
    # Where a local path is uploaded (default: the workspace's default datastore).
    datastore: StrictStr | None = None

    _version = field_validator("version")(asset_version)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        for prefix, reason in REFUSED.items():
            if value.lower().startswith(prefix):
                raise ValueError(reason)
        return value

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, value: str | None) -> str | None:
        return value.removeprefix("azureml:") if value else value


def parse_model(data: dict[str, Any]) -> ModelDocument:
    return validate(ModelDocument, data)


@dataclass(frozen=True)
class JobOutputRef:
    """azureml://jobs/<job>/outputs/<output>[/paths/<path>] (`artifacts` is the job's
    default output, as Azure names it)."""

    job: str
    output: str
    path: str


@dataclass(frozen=True)
class RunRef:
    """runs:/<run_id>/<path>, MLflow's name for a run's artifacts."""

    run_id: str
    path: str


@dataclass(frozen=True)
class LoggedModelRef:
    """models:/<model_id>: an MLflow 3 logged model."""

    model_id: str


@dataclass(frozen=True)
class ArtifactRef:
    """mlflow-artifacts:/<experiment>/<run>/artifacts/<path>: what MLflow's client sends
    for a run's model folder."""

    path: str


Source = JobOutputRef | RunRef | LoggedModelRef | ArtifactRef

_JOB = re.compile(r"^azureml://jobs/([^/]+)/outputs/([^/]+)(?:/paths/(.*))?/?$")
_RUN = re.compile(r"^runs:/([0-9a-fA-F]{32})(?:/(.*))?$")
_LOGGED = re.compile(r"^models:/(m-[0-9a-f]{32})/?$")


def parse_source(path: str) -> Source | None:
    """The job output, run or logged model a path names; None for anything else (a local
    path, a datastore URI, a storage URL). ValueError for a malformed one."""
    lowered = path.lower()
    if lowered.startswith("azureml://jobs/"):
        match = _JOB.match(path)
        if not match:
            raise ValueError("use azureml://jobs/<job>/outputs/<output>[/paths/<path>]")
        output = "default" if match.group(2) == "artifacts" else match.group(2)
        return JobOutputRef(match.group(1), output, (match.group(3) or "").strip("/"))
    if lowered.startswith("runs:/"):
        match = _RUN.match(path)
        if not match:
            raise ValueError("use runs:/<run id>/<path>")
        return RunRef(match.group(1).lower(), (match.group(2) or "").strip("/"))
    if lowered.startswith("models:/"):
        match = _LOGGED.match(path)
        if not match:
            raise ValueError(
                "use models:/<model id> for a logged model (models:/<name>/<version> names "
                "a registered one, which is already registered)"
            )
        return LoggedModelRef(match.group(1))
    if lowered.startswith("mlflow-artifacts:/"):
        return ArtifactRef(path.split(":", 1)[1].lstrip("/"))
    return None


_REF = re.compile(r"^(?:azureml:)?([A-Za-z0-9][A-Za-z0-9_-]*)(?:[:@]([A-Za-z0-9._-]+))?$")


def parse_ref(text: str) -> tuple[str, str | None]:
    """NAME, NAME@VERSION, NAME:VERSION or azureml:NAME:VERSION -> (name, version or
    None for the latest; `latest` means the latest too)."""
    match = _REF.match(text.strip())
    if not match:
        raise DocumentError([("model", f"{text!r} is not NAME[@VERSION] or azureml:NAME:VERSION")])
    version = match.group(2)
    return match.group(1), None if version in (None, "latest") else version
