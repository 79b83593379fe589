"""ASGI entry point: the one application uvicorn serves.

HTTP goes to Django's WSGI handler in a pool of long-lived threads (a2wsgi); websockets
go to Channels. Every page and API view is synchronous (DRF is), and Django's ASGI
handler runs each sync request in a thread created for it, with a fresh database
connection wrapper: measured here, that more than doubled the CPU a simple page costs
and added about 30% to a job submission.
"""

import asyncio
import os
from typing import Any, cast

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
django_wsgi_app = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from a2wsgi.asgi_typing import Receive, Scope, Send  # noqa: E402
from a2wsgi.wsgi_typing import WSGIApp  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from endpoints.router import app as endpoint_router  # noqa: E402
from endpoints.routing import websocket_urlpatterns as deployment_sockets  # noqa: E402
from jobs.routing import websocket_urlpatterns as job_sockets  # noqa: E402
from studio import events  # noqa: E402
from studio.middleware import chunked_bodies  # noqa: E402
from studio.ws import OriginOrTokenValidator, TokenAuthMiddleware  # noqa: E402
from tracking.routing import websocket_urlpatterns as run_sockets  # noqa: E402

# Django's stubs type a response as HttpResponseBase; it is the iterable of bytes WSGI wants.
_django_http = WSGIMiddleware(
    cast(WSGIApp, chunked_bodies(cast(Any, django_wsgi_app))), workers=settings.STUDIO_WEB_THREADS
)


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/api/v1/endpoint/"):
        # Scoring goes to the inference router, ahead of Django: no request stack, no
        # thread hop, no query (its routing tables are cached).
        await endpoint_router(dict(scope), receive, send)
        return
    # Views publish to the channel layer, whose connections belong to this loop.
    events.use_loop(asyncio.get_running_loop())
    await _django_http(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": OriginOrTokenValidator(
            AuthMiddlewareStack(
                TokenAuthMiddleware(URLRouter(job_sockets + run_sockets + deployment_sockets))
            )
        ),
    }
)
