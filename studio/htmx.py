from django.http import HttpRequest


def is_htmx_partial(request: HttpRequest) -> bool:
    """An htmx request that wants a fragment (not a boosted full-page navigation)."""
    htmx = getattr(request, "htmx", None)
    return htmx is not None and bool(htmx) and not htmx.boosted
