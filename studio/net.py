"""This host's network, as the studio's local processes use it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free now (the OS's pick), for a process about to listen on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
