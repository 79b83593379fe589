"""The shapes of the endpoints API's answers, for its schema; the answers are made by the
`render_*` functions, so no key slips into one."""

from typing import Any

from rest_framework import serializers

from endpoints import services
from endpoints.models import Deployment, Endpoint


class EndpointSerializer(serializers.Serializer[Endpoint]):
    name = serializers.CharField()
    compute = serializers.CharField()
    auth_mode = serializers.ChoiceField(choices=["key", "aml_token"])
    traffic = serializers.DictField(child=serializers.IntegerField())
    mirror_traffic = serializers.DictField(child=serializers.IntegerField())
    scoring_uri = serializers.CharField()
    swagger_uri = serializers.CharField()
    provisioning_state = serializers.CharField()
    description = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    properties = serializers.DictField(child=serializers.CharField())
    created_at = serializers.DateTimeField()


class DeploymentSerializer(serializers.Serializer[Deployment]):
    name = serializers.CharField()
    endpoint_name = serializers.CharField()
    type = serializers.ChoiceField(choices=["kubernetes", "managed"])
    model = serializers.CharField(allow_null=True, help_text="NAME:VERSION in the registry")
    environment = serializers.CharField(allow_null=True)
    instance_type = serializers.CharField(allow_null=True)
    instance_count = serializers.IntegerField()
    instances_running = serializers.IntegerField()
    provisioning_state = serializers.CharField()
    error_code = serializers.CharField(help_text="Azure's code when it failed ('' otherwise).")
    reason = serializers.CharField()
    request_settings = serializers.DictField()
    scale_settings = serializers.DictField()
    history = serializers.ListField(child=serializers.DictField(), help_text="What changed.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def render_endpoint(endpoint: Endpoint, base: str) -> dict[str, Any]:
    uri = services.scoring_uri(endpoint, base)
    return {
        "name": endpoint.name,
        "compute": endpoint.compute.name,
        "auth_mode": endpoint.auth_mode,
        "traffic": endpoint.traffic,
        "mirror_traffic": endpoint.mirror_traffic,
        "scoring_uri": uri,
        "swagger_uri": uri.removesuffix("/score") + "/swagger.json",
        "provisioning_state": endpoint.state,
        "description": endpoint.description,
        "tags": endpoint.tags,
        "properties": endpoint.properties,
        "created_at": endpoint.created_at,
    }


def render_deployment(deployment: Deployment) -> dict[str, Any]:
    document = deployment.document
    model = deployment.model
    return {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint.name,
        "type": deployment.type,
        "model": f"{model.name}:{model.version}" if model else None,
        "environment": (deployment.environment_used or {}).get("label"),
        "instance_type": document.get("instance_type"),
        "instance_count": document.get("instance_count", 1),
        "instances_running": sum(int(i.get("replicas", 1)) for i in deployment.instances),
        "provisioning_state": deployment.state,
        "error_code": deployment.error_code,
        "reason": deployment.reason,
        "request_settings": document.get("request_settings") or {},
        "scale_settings": document.get("scale_settings") or {},
        "history": deployment.history,
        "created_at": deployment.created_at,
        "updated_at": deployment.updated_at,
    }
