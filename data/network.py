"""Connections to storage that users name reach public addresses only, checked as they are
made: the address checked is the address connected to, so a name that resolves to a
public address when the datastore is saved and to 127.0.0.1 later (DNS rebinding), or a
redirect to an inward host, is refused all the same.

boto3 and azure-storage-blob both connect through urllib3; inside `public_only()` its
connections go through `_connect`, which resolves the host once, refuses any non-public
address, and connects to the address it checked. Outside it, nothing changes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from urllib3.util import connection

_public_only: ContextVar[bool] = ContextVar("public_only", default=False)
_original = connection.create_connection


class InwardAddress(OSError):
    """The host resolves to an address inside the studio's network."""


def is_public(address: str) -> bool:
    """A globally routable address (a test may widen this to a loopback one of its own)."""
    return ipaddress.ip_address(address.split("%")[0]).is_global


def _connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    if not _public_only.get():
        return _original(address, *args, **kwargs)
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for info in infos:
        if not is_public(str(info[4][0])):
            raise InwardAddress("not a public address")
    return _original((str(infos[0][4][0]), port), *args, **kwargs)


connection.create_connection = _connect  # urllib3.connection calls it through the module


@contextlib.contextmanager
def public_only(active: bool = True) -> Iterator[None]:
    """Within this, urllib3 connects to public addresses only (when `active`)."""
    token = _public_only.set(active or _public_only.get())
    try:
        yield
    finally:
        _public_only.reset(token)
