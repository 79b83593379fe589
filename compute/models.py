"""Compute targets (where a workspace's jobs run) and instance types (what size they get)."""

from typing import ClassVar

from django.core.validators import RegexValidator
from django.db import models

from compute.resources import validate_node_selector, validate_resources
from studio.crypto import EncryptedTextField
from studio.models import Workspace, name_validator


class ComputeKind(models.TextChoices):
    LOCAL = "local", "Local (processes on the studio host)"
    KUBERNETES = "kubernetes", "Kubernetes (a namespace of a registered cluster)"


# Kubernetes names: namespaces are DNS-1123 labels.
namespace_validator = RegexValidator(
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    "Use at most 63 lowercase letters, digits and '-', starting and ending with a letter or "
    "digit (a Kubernetes namespace name).",
)


# Secret names are DNS-1123 subdomains.
secret_name_validator = RegexValidator(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "Use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(a Kubernetes Secret's name).",
)


class Credentials(models.TextChoices):
    GIVEN = "given", "as given at registration"
    EXTENSION = "extension", "the extension's ServiceAccount"


class Cluster(models.Model):
    """A Kubernetes cluster IT-ops registered: how to reach it, and its extension settings.
    Workspaces use it through attachments (compute targets of kind kubernetes)."""

    name = models.CharField(max_length=255, unique=True, validators=[name_validator])
    description = models.TextField(blank=True)
    # The whole kubeconfig, encrypted; empty with in_cluster (the studio's own pod's
    # service account). Never shown back, logged, or sent in a response.
    kubeconfig = EncryptedTextField(blank=True)
    context = models.CharField(max_length=255, blank=True)
    in_cluster = models.BooleanField(default=False)
    # Whose credentials the kubeconfig holds: those IT-ops gave, until the extension is
    # installed; from then on only the extension's ServiceAccount token (least privilege:
    # the admin's are used for that one act and dropped).
    credentials = models.CharField(
        max_length=16, choices=Credentials.choices, default=Credentials.GIVEN, editable=False
    )
    server = models.CharField(max_length=500, blank=True, help_text="The API server's URL.")
    # How this cluster's pods reach the studio (job tokens, uploads, outputs).
    studio_url = models.URLField(blank=True)
    settings = models.JSONField(default=dict, blank=True)  # the extension's, as Azure's
    # Where the router inside the cluster (enableInference) serves clients, as its Service
    # last said (read by the deployment runner): the scoring URIs shown use it.
    router_url = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class ComputeTarget(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="computes")
    name = models.CharField(max_length=255, validators=[name_validator])
    kind = models.CharField(max_length=20, choices=ComputeKind.choices, default=ComputeKind.LOCAL)
    description = models.TextField(blank=True)
    # What a job that names no compute runs on; one per workspace. Kept here, not on the
    # workspace, so that the core app never refers to compute (no migration cycle).
    is_default = models.BooleanField(default=False)
    # Kubernetes targets: an attachment of a cluster, with the namespace its work runs in.
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="attachments"
    )
    namespace = models.CharField(max_length=63, blank=True, validators=[namespace_validator])
    # A Secret in the namespace (kubernetes.io/dockerconfigjson) that pods pull images
    # with: environments in a private registry. IT-ops makes it; the studio names it.
    image_pull_secret = models.CharField(
        max_length=253, blank=True, validators=[secret_name_validator]
    )
    # What stops it from taking work, as last checked (its namespace deleted behind the
    # studio's back, say); empty when it is fine. Submissions to it are refused with it.
    problem = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Its backend is rebuilt when this moves (compute.backends).
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("workspace", "name"), name="compute_name_per_workspace"
            ),
            models.UniqueConstraint(
                fields=("workspace",),
                condition=models.Q(is_default=True),
                name="one_default_compute_per_workspace",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def instance_types(self) -> models.QuerySet["InstanceType"]:
        """The instance types a job on this target may pick: its cluster's InstanceType
        objects, shared by all its attachments; the local host's set for local targets."""
        return InstanceType.objects.filter(cluster=self.cluster_id)


# Instance type names are Kubernetes object names (DNS-1123 subdomains).
instance_type_name_validator = RegexValidator(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "Use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(a Kubernetes object name, at most 253).",
)


class InstanceTypeOrigin(models.TextChoices):
    STUDIO = "studio", "Made in the studio"
    CLUSTER = "cluster", "Found in the cluster"
    BUILTIN = "builtin", "Built in (no object of this name in the cluster)"


class InstanceType(models.Model):
    """Mirrors the cluster-scoped InstanceType CRD: a node selector and resources. Each
    cluster has its own set; the local host's is the set with no cluster."""

    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.CASCADE, related_name="instance_types"
    )
    name = models.CharField(max_length=253, validators=[instance_type_name_validator])
    description = models.TextField(blank=True)
    node_selector = models.JSONField(default=dict, blank=True, validators=[validate_node_selector])
    resources = models.JSONField(default=dict, blank=True, validators=[validate_resources])
    origin = models.CharField(
        max_length=10, choices=InstanceTypeOrigin.choices, default=InstanceTypeOrigin.STUDIO
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("cluster", "name"), name="instance_type_name_per_cluster"
            ),
            models.UniqueConstraint(
                fields=("name",),
                condition=models.Q(cluster=None),
                name="instance_type_name_on_local_host",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def requests(self) -> dict[str, object]:
        return dict(self.resources.get("requests") or {})

    @property
    def limits(self) -> dict[str, object]:
        return dict(self.resources.get("limits") or {})
