"""Rate limits on signing in and on issuing tokens: DRF's throttles, kept in Django's cache
(Redis in server mode, so every web worker counts together)."""

from typing import Any

from django.http import HttpRequest
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle


class SignInByAddress(SimpleRateThrottle):
    """Attempts from one address, whatever the username (password spraying)."""

    scope = "sign_in_address"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignInByUsername(SimpleRateThrottle):
    """Attempts at one username, from any address (guessing one password)."""

    scope = "sign_in_username"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        username = str(request.POST.get("username", "")).strip().lower()
        if not username:
            return None
        return self.cache_format % {"scope": self.scope, "ident": username[:150]}


def _wait(throttles: list[SimpleRateThrottle], request: Any, view: Any = None) -> float | None:
    """Seconds to wait before another try, or None when this one may go ahead. Throttles
    read only the request's META, POST and user, so a page's HttpRequest serves too."""
    waits = [t.wait() or 60.0 for t in throttles if not t.allow_request(request, view)]
    return max(waits) if waits else None


def sign_in_wait(request: HttpRequest) -> float | None:
    return _wait([SignInByAddress(), SignInByUsername()], request)


class _IssuingTokens:
    throttle_scope = "tokens"


def token_issue_wait(request: HttpRequest) -> float | None:
    """Issuing tokens, per user: the page and the API count together."""
    return _wait([ScopedRateThrottle()], request, _IssuingTokens())
