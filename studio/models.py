"""The core: workspaces, who belongs to them with which role, API tokens, and the shape
every versioned asset of a workspace shares (data, environments, models)."""

import hashlib
import secrets
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

# Names that appear in URLs and in CLI arguments: the same rule as Azure ML's.
name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$",
    "Use letters, digits, '-' and '_', starting with a letter or digit (at most 255).",
)


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    CONTRIBUTOR = "contributor", "Contributor"
    READER = "reader", "Reader"


class Workspace(models.Model):
    name = models.CharField(max_length=255, unique=True, validators=[name_validator])
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class VersionedAsset(models.Model):
    """One version of a named asset of a workspace. A version never changes once made
    (Azure's rule), but for its description and tags; `azureml:NAME@latest` is the one
    made last."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=255, validators=[name_validator])
    version = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ("name", "-created_at", "-id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("workspace", "name", "version"), name="%(app_label)s_%(class)s_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.CONTRIBUTOR)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=("workspace", "user"), name="one_membership_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} as {self.role}"


class Invitation(models.Model):
    """A member added by a name that no account has yet, by an owner who is not IT-ops: the
    owner is told the same whether the name exists or not, and sees it among the members;
    it becomes a membership when an account of that name is made, and grants nothing
    before."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="invitations")
    username = models.CharField(max_length=150)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.CONTRIBUTOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=("workspace", "username"), name="one_invitation_per_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.username} invited to {self.workspace} as {self.role}"


def hash_token(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token; only its SHA-256 is stored, the key is shown once at creation."""

    PREFIX = "kst_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Never, when empty.")

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.user} {self.hint}…"

    @classmethod
    def issue(
        cls, user: Any, name: str = "", expires_at: datetime | None = None
    ) -> tuple["ApiToken", str]:
        key = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, key_hash=hash_token(key), hint=key[:8], expires_at=expires_at
        )
        return token, key

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
