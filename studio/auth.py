"""API tokens, accepted as `Authorization: Bearer <token>` by the API and the websockets;
and the tokens workloads (not people) show the studio."""

import abc
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from studio.models import ApiToken, hash_token

SCHEMES = (b"bearer", b"token")


def key_from_header(value: bytes | str | None) -> str | None:
    """The token in an Authorization header value, or None when it holds none."""
    if not value:
        return None
    raw = value.encode() if isinstance(value, str) else value
    parts = raw.split()
    if len(parts) != 2 or parts[0].lower() not in SCHEMES:
        return None
    return parts[1].decode("latin-1")


def user_for_key(key: str) -> AbstractBaseUser | None:
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(key)).first()
    if token is None or not token.user.is_active or token.expired:
        return None
    # Only touch the row once a minute: a busy CLI should not turn reads into writes.
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


class TokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        key = key_from_header(authentication.get_authorization_header(request))
        if key is None:
            return None
        user = user_for_key(key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class WorkloadTokenAuthentication(authentication.BaseAuthentication, abc.ABC):
    """A token held by a workload, not a person (a job's launcher, a deployment's pods,
    a cluster's router): `request.auth` becomes what it opens, the user is anonymous. A
    subclass names its realm, says what a bad token means, and finds what a token opens."""

    realm = ""
    invalid = ""

    @abc.abstractmethod
    def find(self, key: str) -> Any:
        """What the token opens (a job, a deployment, a cluster), or None."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        key = key_from_header(authentication.get_authorization_header(request))
        if key is None:
            return None
        found = self.find(key)
        if found is None:
            raise exceptions.AuthenticationFailed(self.invalid)
        return AnonymousUser(), found

    def authenticate_header(self, request: Request) -> str:
        return f'Bearer realm="{self.realm}"'


class HasWorkloadToken(permissions.BasePermission):
    """For views whose only authentication is a WorkloadTokenAuthentication."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.auth is not None
