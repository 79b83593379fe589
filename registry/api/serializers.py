"""The shape of the models API's answers, for its schema; answers are made by
`render_model` (a plain function), so no field reaches a response unasked."""

from typing import Any

from rest_framework import serializers

from registry.models import Model


class ModelSerializer(serializers.Serializer[Model]):
    name = serializers.CharField()
    version = serializers.CharField()
    type = serializers.ChoiceField(choices=["custom_model", "mlflow_model", "triton_model"])
    path = serializers.CharField(help_text="azureml://datastores/<name>/paths/<path>")
    description = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    stage = serializers.CharField()
    size = serializers.IntegerField()
    file_count = serializers.IntegerField()
    flavors = serializers.ListField(child=serializers.CharField(), help_text="MLflow flavors")
    registered_from = serializers.CharField(help_text="What it was registered from, as given.")
    job = serializers.CharField(allow_null=True, help_text="The job that made it.")
    run_id = serializers.CharField(help_text="The MLflow run that made it ('' when none).")
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


class ModelFileSerializer(serializers.Serializer[Any]):
    path = serializers.CharField()
    size = serializers.IntegerField()


def render_model(model: Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "version": model.version,
        "type": model.type,
        "path": model.path,
        "description": model.description,
        "tags": model.tags,
        "stage": model.stage,
        "size": model.size,
        "file_count": model.file_count,
        "flavors": sorted(model.flavors),
        "registered_from": model.source,
        "job": model.job.name if model.job else None,
        "run_id": model.run_id,
        "created_by": model.created_by.get_username() if model.created_by else None,
        "created_at": model.created_at,
    }
