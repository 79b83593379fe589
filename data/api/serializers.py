"""The shapes of the data API's answers, for its schema; the answers themselves are made
by `render_*` (plain functions), so secrets cannot slip in through a new field."""

from typing import Any

from rest_framework import serializers

from data import services
from data.models import DataAsset, Datastore


class DatastoreSerializer(serializers.Serializer[Datastore]):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["azure_blob", "s3", "local"])
    description = serializers.CharField()
    credentials = serializers.ListField(
        child=serializers.CharField(),
        help_text="Which credentials are stored (account_key, sas_token, access_key_id...); "
        "never their values.",
    )
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DataAssetSerializer(serializers.Serializer[DataAsset]):
    name = serializers.CharField()
    version = serializers.CharField()
    type = serializers.ChoiceField(choices=["uri_file", "uri_folder", "mltable"])
    path = serializers.CharField(help_text="azureml://datastores/<name>/paths/<path>, or a URL.")
    description = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    size = serializers.IntegerField(allow_null=True)
    file_count = serializers.IntegerField(allow_null=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


def render_datastore(datastore: Datastore) -> dict[str, Any]:
    return services.described(datastore)


def render_asset(asset: DataAsset) -> dict[str, Any]:
    return {
        "name": asset.name,
        "version": asset.version,
        "type": asset.type,
        "path": asset.path,
        "description": asset.description,
        "tags": asset.tags,
        "size": asset.size,
        "file_count": asset.file_count,
        "created_by": asset.created_by.get_username() if asset.created_by else None,
        "created_at": asset.created_at,
    }
