"""Azure ML CLI v2 command-job YAML -> a validated job spec.

Parsing is pure: no database. What depends on the workspace (does the compute exist,
is the instance type offered there) is checked by `jobs.services`.
Every problem comes back as a (field path, message) pair, all of them at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    field_validator,
)

from compute.launcher import references
from data.spec import parse_ref
from studio.documents import NAME_PATTERN, DocumentError, Strict, asset_version, field_errors

# Fields of Azure's command-job schema that this product does not run yet: refused by
# name rather than reported as unknown, so the user knows it is a gap, not a typo.
NOT_SUPPORTED = {
    "services": "interactive services (SSH, VS Code, Jupyter, TensorBoard) are not supported yet",
    "identity": "job identities are not supported; jobs run with the compute's own credentials",
    "queue_settings": "queue settings are not supported yet",
    "parent_job_name": "child jobs are not supported yet",
    "component": "components are not supported yet",
    "parameters": "parameters are not supported yet",
}
READ_ONLY = {"id", "status", "creation_context", "services_", "studio_url", "output"}
OTHER_TYPES = {"sweep", "pipeline", "automl", "spark", "parallel", "import", "data_transfer"}
NAME = re.compile(NAME_PATTERN)
INPUT_MODES = {"ro_mount", "rw_mount", "download", "direct", "eval_mount", "eval_download"}


# A job document's problems, each with the field path it concerns.
SpecError = DocumentError


Literal_ = StrictStr | StrictBool | StrictInt | StrictFloat


class DataInput(Strict):
    type: Literal["uri_file", "uri_folder", "mltable"]
    path: StrictStr
    mode: StrictStr | None = None
    description: StrictStr | None = None

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str | None) -> str | None:
        if value is not None and value not in INPUT_MODES:
            raise ValueError("must be one of " + ", ".join(sorted(INPUT_MODES)))
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value.lower().startswith(("adl://", "gs://")):
            raise ValueError("this storage is not supported; use azure_blob or s3 datastores")
        parse_ref(value)  # a malformed reference says how to write it
        return value

    def refers_to_data(self) -> bool:
        """Names data the studio resolves (an asset, a datastore, storage, a URL), rather
        than a local path uploaded with the job."""
        return "://" in self.path or self.path.startswith("azureml:")


class LiteralInput(Strict):
    type: Literal["string", "integer", "number", "boolean"]
    default: Literal_ | None = None
    value: Literal_ | None = None
    optional: StrictBool = False
    description: StrictStr | None = None


DATA_TYPES = ("uri_file", "uri_folder", "mltable")
LITERAL_TYPES = ("string", "integer", "number", "boolean")
ASSET_TYPES = ("mlflow_model", "custom_model", "triton_model")


def _input_kind(value: Any) -> str:
    # Called on raw documents when validating and on models when serializing.
    if isinstance(value, BaseModel):
        return {DataInput: "data", LiteralInput: "typed"}.get(type(value), "bad")
    if not isinstance(value, dict):
        return "literal"
    kind = value.get("type")
    if kind in DATA_TYPES:
        return "data"
    if kind in LITERAL_TYPES:
        return "typed"
    return "bad"


class BadInput(Strict):
    """An input mapping whose type this product cannot run: always refused."""

    model_config = ConfigDict(extra="allow")
    type: Any = None

    @field_validator("type")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if value in ASSET_TYPES:
            raise ValueError(f"{value} inputs are not supported yet; use uri_file or uri_folder")
        if value is None:
            raise ValueError("is required for an input given as a mapping")
        raise ValueError(
            f"unknown input type {value!r}; use one of " + ", ".join(DATA_TYPES + LITERAL_TYPES)
        )


AnyInput = Annotated[
    Annotated[DataInput, Tag("data")]
    | Annotated[LiteralInput, Tag("typed")]
    | Annotated[BadInput, Tag("bad")]
    | Annotated[Literal_ | None, Tag("literal")],
    Discriminator(_input_kind),
]


def _output_kind(value: Any) -> str:
    if isinstance(value, BadOutput):
        return "bad"
    if isinstance(value, dict) and value.get("type", "uri_folder") != "uri_folder":
        return "bad"
    return "ok"


class BadOutput(Strict):
    model_config = ConfigDict(extra="allow")
    type: Any = None

    @field_validator("type")
    @classmethod
    def _type(cls, value: Any) -> Any:
        raise ValueError(f"{value} outputs are not supported yet; use uri_folder")


class Output(Strict):
    type: Literal["uri_folder"] = "uri_folder"
    mode: Literal["rw_mount", "upload", "direct"] | None = None
    description: StrictStr | None = None
    # Where its files go (a datastore path; default: workspaceblobstore's
    # azureml/<job>/<output>/), and the data asset they become when the job completes.
    path: StrictStr | None = None
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)] | None = None
    version: StrictStr | StrictInt | None = None

    _version = field_validator("version")(asset_version)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and parse_ref(value) is None:
            raise ValueError("use a datastore path: azureml://datastores/<name>/paths/<path>")
        return value


class InlineEnvironment(Strict):
    image: StrictStr | None = None
    conda_file: StrictStr | dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    inference_config: dict[str, Any] | None = None
    name: StrictStr | None = None
    version: StrictStr | int | None = None
    description: StrictStr | None = None
    tags: dict[str, StrictStr] | None = None
    os_type: Literal["linux", "windows"] | None = None


class Resources(Strict):
    instance_type: StrictStr | None = None
    instance_count: Annotated[StrictInt, Field(ge=1)] = 1
    # Docker's notation, as Azure takes it: 2g, 512m (the pod's /dev/shm on Kubernetes).
    shm_size: Annotated[StrictStr, Field(pattern=r"^[0-9]+[bkmgBKMG]?$")] | None = None
    properties: dict[str, Any] | None = None


class Limits(Strict):
    timeout: Annotated[StrictInt, Field(gt=0)] | None = None


class Distribution(Strict):
    type: Literal["pytorch", "mpi", "tensorflow", "ray"]
    process_count_per_instance: Annotated[StrictInt, Field(ge=1)] | None = None
    worker_count: Annotated[StrictInt, Field(ge=1)] | None = None
    parameter_server_count: Annotated[StrictInt, Field(ge=0)] | None = None
    port: StrictInt | None = None
    include_dashboard: StrictBool | None = None
    head_node_additional_args: StrictStr | None = None
    worker_node_additional_args: StrictStr | None = None


class CommandJob(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    type: Literal["command"] = "command"
    name: StrictStr | None = None
    display_name: StrictStr | None = None
    experiment_name: StrictStr | None = None
    description: StrictStr | None = None
    tags: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool | None] = {}
    properties: dict[str, StrictStr] = {}
    code: StrictStr | None = None
    command: StrictStr
    inputs: dict[str, AnyInput] = {}
    outputs: dict[
        str,
        Annotated[
            Annotated[Output | None, Tag("ok")] | Annotated[BadOutput, Tag("bad")],
            Discriminator(_output_kind),
        ],
    ] = {}
    environment: StrictStr | InlineEnvironment | None = None
    environment_variables: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool] = {}
    compute: StrictStr | None = None
    resources: Resources = Resources()
    limits: Limits = Limits()
    distribution: Distribution | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME.match(value):
            raise ValueError(
                "use letters, digits, '-' and '_', starting with a letter or digit (at most 255)"
            )
        return value

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str | None) -> str | None:
        return value.removeprefix("azureml:") if value else value

    @field_validator("code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value and (value.startswith("azureml:") or "://" in value):
            raise ValueError("code assets and remote code are not supported; use a local folder")
        return value

    @field_validator("inputs", "outputs", "environment_variables")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"{key!r} is not a valid name (letters, digits and '_')")
        return value

    # -- derived -------------------------------------------------------------------------
    def declared_outputs(self) -> dict[str, Output | None]:
        """Each output as declared (None: declared with no fields, as `hello_output:`)."""
        return {k: v if isinstance(v, Output) else None for k, v in self.outputs.items()}

    def data_inputs(self) -> dict[str, DataInput]:
        return {k: v for k, v in self.inputs.items() if isinstance(v, DataInput)}

    def literal_values(self) -> dict[str, str]:
        """Input name -> text, for the inputs that are literals and have a value."""
        values: dict[str, str] = {}
        for key, item in self.inputs.items():
            if isinstance(item, LiteralInput):
                item_value = item.value if item.value is not None else item.default
                if item_value is not None:
                    values[key] = _text(item_value)
            elif item is not None and not isinstance(item, DataInput):
                values[key] = _text(item)
        return values


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"  # what Azure ML passes for booleans
    return str(value)


def parse(data: dict[str, Any]) -> CommandJob:
    """Validate a job document; raise SpecError listing every problem."""
    job_type = data.get("type", "command")
    if job_type != "command":
        if job_type in OTHER_TYPES:
            raise SpecError(
                [("type", f"{job_type} jobs are not supported yet; only command jobs run here")]
            )
        raise SpecError([("type", f"unknown job type {job_type!r}; use command")])
    errors: list[tuple[str, str]] = []
    clean = dict(data)
    for key in list(clean):
        if key in NOT_SUPPORTED:
            errors.append((key, f"not supported: {NOT_SUPPORTED[key]}"))
            clean.pop(key)
        elif key in READ_ONLY:
            errors.append((key, "is set by the studio and cannot be submitted"))
            clean.pop(key)
    try:
        job = CommandJob.model_validate(clean)
    except ValidationError as exc:
        raise SpecError(errors + [e for e in field_errors(exc) if e not in errors]) from exc
    errors.extend(_check_command(job))
    if errors:
        raise SpecError(errors)
    return job


def _check_command(job: CommandJob) -> list[tuple[str, str]]:
    errors = []
    declared_inputs = set(job.inputs)
    for expression, optional in references(job.command):
        if expression == "name":
            continue
        kind, _, key = expression.partition(".")
        if kind == "inputs":
            if key not in declared_inputs and not optional:
                errors.append(
                    (
                        "command",
                        f"${{{{inputs.{key}}}}} refers to an input the job does not declare",
                    )
                )
            elif key in declared_inputs and job.inputs[key] is None and not optional:
                errors.append((f"inputs.{key}", "has no value but the command needs it"))
        elif kind == "outputs":
            if key not in job.outputs:
                errors.append(
                    (
                        "command",
                        f"${{{{outputs.{key}}}}} refers to an output the job does not declare",
                    )
                )
        else:
            errors.append(
                (
                    "command",
                    f"${{{{{expression}}}}} is not supported; use inputs.X, outputs.X or name",
                )
            )
    return errors
