"""Keep the whole middleware chain synchronous under ASGI.

Django runs middleware in async mode from the innermost one outwards as long as each
can; the ones built on MiddlewareMixin then hop to a worker thread for every hook, and
WhiteNoise (sync only) hops back. A sync-only middleware at the innermost position
switches the whole chain to sync mode: one hop in, one to the view, instead of a dozen.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class SyncChainMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
