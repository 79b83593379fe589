"""The model registry: named models, each with immutable versions (Azure ML's models,
MLflow's registered models and model versions: one registry, two APIs)."""

from typing import ClassVar

from django.conf import settings
from django.db import models

from studio.models import VersionedAsset, Workspace, name_validator


class RegisteredModel(models.Model):
    """A model's name in a workspace, with what belongs to the name rather than to one
    version: its description, tags and aliases (MLflow's `@champion`)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=255, validators=[name_validator])
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    aliases = models.JSONField(default=dict, blank=True)  # alias -> version
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("workspace", "name"), name="model_name_per_workspace")
        ]

    def __str__(self) -> str:
        return self.name


class ModelType(models.TextChoices):
    CUSTOM = "custom_model"
    MLFLOW = "mlflow_model"
    TRITON = "triton_model"


class Model(VersionedAsset):
    """One version of a model: its files (kept in a datastore, never changed) and where
    they came from."""

    registered = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, related_name="versions"
    )
    type = models.CharField(max_length=20, choices=ModelType.choices, default=ModelType.CUSTOM)
    # azureml://datastores/<name>/paths/<path>: a file, or a folder.
    path = models.CharField(max_length=2000)
    size = models.BigIntegerField(default=0)
    file_count = models.IntegerField(default=0)
    # What it was registered from, as given: a local upload, azureml://jobs/..., runs:/...
    source = models.CharField(max_length=2000, blank=True)
    # Lineage: the job that made it, and the MLflow run (a job's, or a notebook's).
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="models"
    )
    run_id = models.CharField(max_length=32, blank=True)
    # An MLflow model's flavors, from its MLmodel file: how it loads without a script.
    flavors = models.JSONField(default=dict, blank=True)
    stage = models.CharField(max_length=20, default="None")  # MLflow's (deprecated) stages

    class Meta(VersionedAsset.Meta):
        pass
