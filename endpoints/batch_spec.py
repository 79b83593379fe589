"""Batch endpoint and model batch deployment documents as Azure ML's CLI v2 YAML writes
them (batchEndpoint, modelBatchDeployment, and the legacy batchDeployment form with its
settings at the top level), validated, with Azure's defaults. Pure: no database."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from endpoints.spec import REGISTRY, CodeConfiguration, InlineModel, Name
from studio.documents import Strict, validate

# The legacy form's settings, at the top level of the document.
LEGACY_SETTINGS = (
    "mini_batch_size",
    "max_concurrency_per_instance",
    "error_threshold",
    "logging_level",
    "retry_settings",
    "output_action",
    "output_file_name",
    "environment_variables",
)
PIPELINE = (
    "pipeline component deployments are not supported: deploy a model (type: model), "
    "or run the pipeline as a job"
)


class BatchEndpointDocument(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Name
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    properties: dict[str, StrictStr] = {}
    auth_mode: StrictStr = "aad_token"
    defaults: dict[str, StrictStr | None] = {}

    @field_validator("auth_mode")
    @classmethod
    def _auth_mode(cls, value: str) -> str:
        if value.lower() != "aad_token":
            raise ValueError(
                "batch endpoints take aad_token only, as Azure's: here, the caller's own "
                "studio token, the one every API call carries"
            )
        return value.lower()

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        unknown = set(value) - {"deployment_name"}
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: only deployment_name has a default")
        return value

    @property
    def default_deployment(self) -> str | None:
        return self.defaults.get("deployment_name")


def parse_batch_endpoint(data: dict[str, Any]) -> BatchEndpointDocument:
    return validate(BatchEndpointDocument, data)


class RetrySettings(Strict):
    max_retries: Annotated[StrictInt, Field(ge=0)] = 3
    timeout: Annotated[StrictInt, Field(ge=1)] = 30  # seconds, per mini-batch


class BatchSettings(Strict):
    mini_batch_size: Annotated[StrictInt, Field(ge=1)] = 10
    max_concurrency_per_instance: Annotated[StrictInt, Field(ge=1)] = 1
    error_threshold: Annotated[StrictInt, Field(ge=-1)] = -1  # -1: ignore every failure
    logging_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    retry_settings: RetrySettings = RetrySettings()
    output_action: Literal["append_row", "summary_only"] = "append_row"
    output_file_name: Annotated[StrictStr, Field(pattern=r"^[^/\\]+$", max_length=255)] = (
        "predictions.csv"
    )
    environment_variables: dict[str, StrictStr] = {}

    @field_validator("logging_level", "output_action", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML reads `WORKERS: 2` as a number; Azure takes it
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value


class BatchResources(Strict):
    instance_count: Annotated[StrictInt, Field(ge=1)] = 1
    instance_type: StrictStr | None = None
    properties: dict[str, Any] = {}


class BatchDeploymentDocument(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Name
    endpoint_name: Name
    type: Literal["model"] | None = None
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    properties: dict[str, StrictStr] = {}
    model: StrictStr | InlineModel
    code_configuration: CodeConfiguration | None = None
    environment: StrictStr | dict[str, Any] | None = None
    compute: StrictStr | None = None
    resources: BatchResources = BatchResources()
    settings: BatchSettings = BatchSettings()

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, data: Any) -> Any:
        """`type: pipeline` refused; the legacy form's top-level settings moved under
        `settings`, where the current form keeps them."""
        if not isinstance(data, dict):
            return data
        if str(data.get("type", "")).lower() == "pipeline" or "component" in data:
            raise ValueError(f"type: {PIPELINE}")
        if "job_definition" in data:
            raise ValueError(f"job_definition: {PIPELINE}")
        legacy = {k: data[k] for k in LEGACY_SETTINGS if k in data}
        if legacy:
            if data.get("type") is not None:
                raise ValueError(
                    f"{', '.join(legacy)}: with type: model these go under settings "
                    "(at the top level only in the legacy form, without type)"
                )
            data = {k: v for k, v in data.items() if k not in legacy}
            data["settings"] = {**legacy, **(data.get("settings") or {})}
        return data

    @field_validator("model", "environment", mode="before")
    @classmethod
    def _workspace_only(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower().startswith(REGISTRY):
            raise ValueError(
                "registry references (azureml://registries/...) are not supported; register "
                "it in this workspace"
            )
        return value

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str | None) -> str | None:
        return value.removeprefix("azureml:") if value else value


def parse_batch_deployment(data: dict[str, Any]) -> BatchDeploymentDocument:
    return validate(BatchDeploymentDocument, data)
