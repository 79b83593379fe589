"""Environment documents as Azure ML's CLI v2 YAML writes them, and what a conda file
asks for, read as pip requirements. Pure: no database."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import Field, StrictStr, field_validator, model_validator

from studio.documents import DocumentError, Strict, asset_version, validate

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"


class BuildContext(Strict):
    path: StrictStr
    dockerfile_path: StrictStr = "Dockerfile"


class EnvironmentDocument(Strict):
    """Azure's environment.schema.json."""

    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Annotated[StrictStr, Field(pattern=NAME)] | None = None
    version: StrictStr | int | None = None
    image: StrictStr | None = None
    conda_file: dict[str, Any] | None = None
    build: BuildContext | None = None
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    os_type: Literal["linux", "windows"] = "linux"
    inference_config: dict[str, Any] | None = None

    _version = field_validator("version")(asset_version)

    @field_validator("os_type")
    @classmethod
    def _linux(cls, value: str) -> str:
        if value != "linux":
            raise ValueError("only linux environments run here")
        return value

    @field_validator("conda_file", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "send the conda file's content, not its path (kstudio reads the file it names)"
            )
        return value

    @model_validator(mode="after")
    def _something(self) -> EnvironmentDocument:
        if not (self.image or self.build or self.conda_file):
            raise ValueError("give an image, a conda_file or a build context")
        if self.build and (self.image or self.conda_file):
            raise ValueError("build is given alone: its Dockerfile says the image and packages")
        return self


def parse_environment(data: dict[str, Any], named: bool = True) -> EnvironmentDocument:
    document = validate(EnvironmentDocument, data)
    if named and not document.name:
        raise DocumentError([("name", "is required")])
    if document.conda_file is not None:
        conda_plan(document.conda_file)  # its problems, by field, before anything is kept
    return document


# -- conda files -----------------------------------------------------------------------------
@dataclass
class CondaPlan:
    """What a conda file asks for, as this studio installs it: pip requirements in a
    virtual environment of the asked Python (when the host has it)."""

    python: str | None  # "3.8": the pin's major.minor
    requirements: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The environment's identity: the same Python and packages, the same key."""
        content = json.dumps({"python": self.python, "requirements": sorted(self.requirements)})
        return hashlib.sha256(content.encode()).hexdigest()[:16]


PIP_OPTIONS = "pip options are not supported: packages come from the index the host is set up with"
_CONDA_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$")


def _from_conda(spec: str) -> str:
    """A conda MatchSpec (numpy, numpy=1.22, numpy 1.22, numpy>=1.2, numpy=1.22=py38_0) as a
    pip requirement. conda's single '=' means a prefix: 1.22 is 1.22.*."""
    spec = spec.split("::")[-1].strip()
    match = _CONDA_SPEC.match(spec)
    if not match:
        raise ValueError(f"{spec!r} is not a conda package spec")
    name, extras, rest = match.group(1), match.group(2) or "", match.group(3).strip()
    if not rest:
        return name + extras
    if rest.startswith("=="):
        return f"{name}{extras}=={rest[2:].split('=')[0].strip()}"  # a build string may follow
    if rest[0] in "<>!~":
        return name + extras + rest.replace(" ", "")
    version = rest.lstrip("=").split("=")[0].strip()  # a build string follows a second '='
    if not version:
        raise ValueError(f"{spec!r} has no version after '='")
    return f"{name}{extras}=={version if '*' in version else version + '.*'}"


def conda_plan(conda: dict[str, Any]) -> CondaPlan:
    """Read a conda file's dependencies; DocumentError names each bad entry."""
    errors: list[tuple[str, str]] = []
    dependencies = conda.get("dependencies", [])
    if not isinstance(dependencies, list):
        raise DocumentError([("conda_file.dependencies", "must be a list")])
    python: str | None = None
    requirements: list[str] = []
    notes: list[str] = []
    for index, item in enumerate(dependencies):
        where = f"conda_file.dependencies.{index}"
        if isinstance(item, dict) and set(item) == {"pip"}:
            pips = item["pip"] or []
            if not isinstance(pips, list):
                errors.append((f"{where}.pip", "must be a list of requirements"))
                continue
            for number, line in enumerate(pips):
                text = str(line).strip()
                if text.startswith("-"):
                    errors.append((f"{where}.pip.{number}", PIP_OPTIONS))
                    continue
                try:
                    Requirement(text)
                except InvalidRequirement as exc:
                    errors.append((f"{where}.pip.{number}", f"not a pip requirement: {exc}"))
                    continue
                requirements.append(text)
            continue
        if not isinstance(item, str):
            errors.append((where, "must be a conda package spec or a {pip: [...]} list"))
            continue
        name = item.split("::")[-1].strip().split("=")[0].split(" ")[0].split("<")[0]
        name = name.split(">")[0].lower()
        if name == "python":
            version = re.search(r"(\d+)\.(\d+)", item)
            python = f"{version.group(1)}.{version.group(2)}" if version else None
            continue
        if name == "pip":
            notes.append(f"{item}: the environment's own pip installs the packages")
            continue
        try:
            requirement = _from_conda(item)
            Requirement(requirement)
        except (ValueError, InvalidRequirement) as exc:
            errors.append((where, str(exc)))
            continue
        requirements.append(requirement)
    if errors:
        raise DocumentError(errors)
    return CondaPlan(python, requirements, notes)


# -- references to environments --------------------------------------------------------------
@dataclass(frozen=True)
class EnvironmentRef:
    name: str
    version: str | None  # None: the latest
    registry: str = ""  # azureml://registries/<registry>/...: a curated environment


_WORKSPACE_REF = re.compile(
    r"^azureml:(?!//)([A-Za-z0-9][A-Za-z0-9_.-]*?)(?::([A-Za-z0-9._-]+)|@latest)$"
)
_REGISTRY_REF = re.compile(
    r"^azureml://registries/([^/]+)/environments/([^/]+)/(?:labels/latest|versions/([^/]+))$"
)


def parse_ref(text: str) -> EnvironmentRef:
    """azureml:NAME:VERSION, azureml:NAME@latest, or a registry reference; ValueError
    says how to write one."""
    match = _WORKSPACE_REF.match(text)
    if match:
        return EnvironmentRef(match.group(1), match.group(2))
    match = _REGISTRY_REF.match(text)
    if match:
        return EnvironmentRef(match.group(2), match.group(3), registry=match.group(1))
    raise ValueError(
        "use azureml:<name>:<version>, azureml:<name>@latest, "
        "azureml://registries/azureml/environments/<name>/labels/latest, or an inline mapping"
    )
