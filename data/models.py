"""Datastores (where a workspace's data lives, with the credentials to reach it) and data
assets (a named, versioned path in one, or a URL)."""

from typing import ClassVar

from django.db import models

from studio.crypto import EncryptedTextField
from studio.models import VersionedAsset, Workspace, name_validator

DEFAULT_DATASTORE = "workspaceblobstore"  # Azure's name for a workspace's default


class DatastoreKind(models.TextChoices):
    AZURE_BLOB = "azure_blob", "Azure blob container"
    S3 = "s3", "S3-compatible bucket"
    LOCAL = "local", "Folder on the studio host"


class Datastore(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="datastores")
    name = models.CharField(max_length=255, validators=[name_validator])
    kind = models.CharField(max_length=20, choices=DatastoreKind.choices)
    description = models.TextField(blank=True)
    # Where, in Azure's words: account_name, container_name, endpoint, protocol, account_url
    # (azure_blob); bucket, endpoint_url, region (s3); path (local). Nothing secret.
    location = models.JSONField(default=dict)
    # {"account_key" | "sas_token" | "access_key_id" + "secret_access_key": ...}, encrypted;
    # never shown back. Empty: anonymous (a public container or bucket).
    credentials = EncryptedTextField(blank=True)
    credentials_kind = models.CharField(max_length=40, blank=True)  # what was given, for display
    is_default = models.BooleanField(default=False)
    # Saved by IT-ops: its storage may answer inside the studio's network. Otherwise the
    # studio connects to public addresses only (data.network), whatever the name resolves to.
    inward = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("workspace", "name"), name="datastore_per_workspace"),
            models.UniqueConstraint(
                fields=("workspace",),
                condition=models.Q(is_default=True),
                name="one_default_datastore",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class DataType(models.TextChoices):
    URI_FILE = "uri_file"
    URI_FOLDER = "uri_folder"
    MLTABLE = "mltable"


class DataAsset(VersionedAsset):
    """One version of a data asset."""

    type = models.CharField(max_length=20, choices=DataType.choices)
    # Canonical: azureml://datastores/<name>/paths/<path>, or an http(s) / s3 / wasbs URL.
    path = models.CharField(max_length=2000)
    # What the path held when registered (files under a datastore path); None: unknown.
    size = models.BigIntegerField(null=True, blank=True)
    file_count = models.IntegerField(null=True, blank=True)

    class Meta(VersionedAsset.Meta):
        pass
