"""Online endpoint and deployment documents as Azure ML's CLI v2 YAML writes them
(managedOnlineEndpoint / kubernetesOnlineEndpoint, managedOnlineDeployment /
kubernetesOnlineDeployment), validated, with Azure's defaults. Pure: no database."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from studio.documents import Strict, validate

# Azure's rule for endpoint and deployment names.
ENDPOINT_NAME = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
Name = Annotated[StrictStr, Field(pattern=ENDPOINT_NAME, min_length=3, max_length=32)]

# What Azure has and this product does not do: refused by name, with the reason.
ENDPOINT_REFUSED = {
    "identity": "endpoint identities are not supported: a deployment reads its model and "
    "data through the studio",
    "public_network_access": "network isolation is not supported: who may call an endpoint "
    "is decided by its keys or tokens",
}
DEPLOYMENT_REFUSED = {
    "data_collector": "data collection is not supported",
    "egress_public_network_access": "network isolation is not supported",
    "private_network_connection": "network isolation is not supported",
}
REGISTRY = "azureml://registries/"


def _refuse(data: Any, refused: dict[str, str]) -> Any:
    if isinstance(data, dict):
        for name, reason in refused.items():
            if name in data:
                raise ValueError(f"{name}: {reason}")
    return data


class EndpointDocument(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Name
    compute: StrictStr | None = None
    auth_mode: StrictStr = "key"
    traffic: dict[StrictStr, StrictInt] = {}
    mirror_traffic: dict[StrictStr, StrictInt] = {}
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}
    properties: dict[str, StrictStr] = {}

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse(data, ENDPOINT_REFUSED)

    @field_validator("compute")
    @classmethod
    def _compute(cls, value: str | None) -> str | None:
        return value.removeprefix("azureml:") if value else value

    @field_validator("auth_mode")
    @classmethod
    def _auth_mode(cls, value: str) -> str:
        mode = value.lower()
        if mode == "aad_token":
            raise ValueError(
                "aad_token needs Microsoft Entra ID, which this studio does not use; "
                "use key (two keys per endpoint) or aml_token (short-lived tokens)"
            )
        if mode not in ("key", "aml_token"):
            raise ValueError("use key or aml_token")
        return mode

    @field_validator("traffic", "mirror_traffic")
    @classmethod
    def _percentages(cls, value: dict[str, int]) -> dict[str, int]:
        for name, percent in value.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"{name}: {percent} is not a percentage (0 to 100)")
        return value

    @model_validator(mode="after")
    def _shares(self) -> EndpointDocument:
        total = sum(self.traffic.values())
        if self.traffic and total not in (0, 100):
            raise ValueError(f"traffic: the shares add up to {total}; they must add up to 0 or 100")
        if len(self.mirror_traffic) > 1:
            raise ValueError("mirror_traffic: mirror to one deployment at most")
        for name, percent in self.mirror_traffic.items():
            if percent > 50:
                raise ValueError(f"mirror_traffic: at most 50% is mirrored, not {percent}%")
            if percent and self.traffic.get(name):
                raise ValueError(
                    f"mirror_traffic: {name} takes live traffic; mirror to another deployment"
                )
        return self


def parse_endpoint(data: dict[str, Any]) -> EndpointDocument:
    return validate(EndpointDocument, data)


class CodeConfiguration(Strict):
    code: StrictStr
    scoring_script: StrictStr


class Quantities(Strict):
    cpu: StrictStr | int | float | None = None
    memory: StrictStr | None = None
    gpu: StrictStr | int | None = Field(default=None, alias="nvidia.com/gpu")


class Resources(Strict):
    requests: Quantities | None = None
    limits: Quantities | None = None

    @model_validator(mode="after")
    def _requests(self) -> Resources:
        if self.requests is None or self.requests.cpu is None or self.requests.memory is None:
            raise ValueError("resources.requests needs cpu and memory (Azure's rule)")
        return self


class ScaleSettings(Strict):
    type: Literal["default", "target_utilization"]
    min_instances: Annotated[StrictInt, Field(ge=0)] = 1
    max_instances: Annotated[StrictInt, Field(ge=1)] = 1
    target_utilization_percentage: Annotated[StrictInt, Field(ge=1, le=100)] = 70
    polling_interval: Annotated[StrictInt, Field(ge=1)] = 1  # seconds

    @model_validator(mode="after")
    def _bounds(self) -> ScaleSettings:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances is more than max_instances")
        return self


class RequestSettings(Strict):
    request_timeout_ms: Annotated[StrictInt, Field(ge=1, le=180_000)] = 5000
    max_concurrent_requests_per_instance: Annotated[StrictInt, Field(ge=1)] = 1
    max_queue_wait_ms: Annotated[StrictInt, Field(ge=0)] = 500


class Probe(Strict):
    period: Annotated[StrictInt, Field(ge=1)] = 10
    initial_delay: Annotated[StrictInt, Field(ge=0)] = 10
    timeout: Annotated[StrictInt, Field(ge=1)] = 2
    success_threshold: Annotated[StrictInt, Field(ge=1)] = 1
    failure_threshold: Annotated[StrictInt, Field(ge=1)] = 30


class InlineModel(Strict):
    path: StrictStr
    type: Literal["custom_model", "mlflow_model", "triton_model"] = "custom_model"
    name: StrictStr | None = None
    version: StrictStr | int | None = None
    description: StrictStr = ""


class DeploymentDocument(Strict):
    schema_: StrictStr | None = Field(default=None, alias="$schema")
    name: Name
    type: Literal["kubernetes", "managed"] | None = None  # by the endpoint's compute
    endpoint_name: Name
    model: StrictStr | InlineModel | None = None
    model_mount_path: StrictStr | None = None
    code_configuration: CodeConfiguration | None = None
    environment: StrictStr | dict[str, Any] | None = None
    environment_variables: dict[str, StrictStr] = {}
    instance_type: StrictStr | None = None
    instance_count: Annotated[StrictInt, Field(ge=1)] = 1
    resources: Resources | None = None
    scale_settings: ScaleSettings | None = None
    request_settings: RequestSettings = RequestSettings()
    liveness_probe: Probe = Probe()
    readiness_probe: Probe = Probe()
    app_insights_enabled: StrictBool = False
    description: StrictStr = ""
    tags: dict[str, StrictStr] = {}

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        return _refuse(data, DEPLOYMENT_REFUSED)

    @field_validator("model", "environment", mode="before")
    @classmethod
    def _workspace_only(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower().startswith(REGISTRY):
            raise ValueError(
                "registry references (azureml://registries/...) are not supported; register "
                "it in this workspace"
            )
        return value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML reads `WORKERS: 2` as a number; Azure takes it
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _scoring(self) -> DeploymentDocument:
        if self.model is None and self.code_configuration is None:
            raise ValueError("give a model, a code_configuration (score.py), or both")
        if self.scale_settings is None:
            # Azure's defaults: target utilization on Kubernetes (1 to 1 instances at
            # 70%, polled every second); managed deployments keep their instance_count.
            if self.type == "kubernetes":
                self.scale_settings = ScaleSettings(type="target_utilization")
            else:
                self.scale_settings = ScaleSettings(type="default")
        return self

    @property
    def mlflow_without_script(self) -> bool:
        """An MLflow model needs no scoring script or environment."""
        return (
            isinstance(self.model, InlineModel)
            and self.model.type == "mlflow_model"
            and self.code_configuration is None
        )


def parse_deployment(data: dict[str, Any]) -> DeploymentDocument:
    return validate(DeploymentDocument, data)


def instances_wanted(document: dict[str, Any]) -> int:
    """instance_count, or for target_utilization its min_instances (at least one: the
    autoscaler adds more when the router's counts ask for them)."""
    scale = document.get("scale_settings") or {}
    if scale.get("type") == "target_utilization":
        return max(1, int(scale.get("min_instances") or 1))
    return int(document.get("instance_count") or 1)
