"""Server logs: one access line per HTTP request; websocket handshakes only at debug."""

import copy
import logging
from typing import Any

import uvicorn.config

HANDSHAKE_MARKS = ('"WebSocket ', "connection open", "connection closed")


class HandshakesAtDebug(logging.Filter):
    """uvicorn logs every websocket handshake at info (one per browser tab, per reconnect):
    those become debug records, shown only when LOG_LEVEL=DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(mark in str(record.msg) for mark in HANDSHAKE_MARKS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging setup, with the handshake filter on its handlers."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"handshakes": {"()": HandshakesAtDebug}}
    for handler in config["handlers"].values():
        handler["filters"] = ["handshakes"]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets"):
        config["loggers"].setdefault(name, {})["level"] = level.upper()
    config["loggers"]["websockets"].update(handlers=["default"], propagate=False)
    return config
