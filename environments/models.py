"""Environments: what a job's process runs in (an image, a conda file's packages, or an
image built from a context), versioned per workspace."""

from django.db import models

from studio.models import VersionedAsset


class Environment(VersionedAsset):
    """One version of an environment."""

    image = models.CharField(max_length=1000, blank=True)
    # The conda file's content, as a mapping (channels, dependencies with pip:).
    conda_file = models.JSONField(null=True, blank=True)
    # An image build: {"context": artifact name of the context archive, "dockerfile_path"}.
    build = models.JSONField(null=True, blank=True)
    os_type = models.CharField(max_length=10, default="linux")
    inference_config = models.JSONField(null=True, blank=True)

    class Meta(VersionedAsset.Meta):
        pass
