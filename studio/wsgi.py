"""WSGI entry point: the studio's HTTP side (pages and API), without websockets."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
application = get_wsgi_application()

from studio.middleware import chunked_bodies  # noqa: E402

application = chunked_bodies(application)  # type: ignore[assignment]
