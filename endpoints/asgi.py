"""The inference router alone, as `manage.py runrouter` serves it (one process or many):
the same ASGI app the studio puts ahead of Django."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
django.setup()

from endpoints.router import app as application  # noqa: E402

__all__ = ["application"]
