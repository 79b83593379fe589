"""Reading the artifact store from a backend: `STORAGES["artifacts"]`."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.core.files.storage import Storage, storages


def store() -> Storage:
    return storages["artifacts"]


def fetch(name: str, destination: Path) -> Path:
    """Copy one artifact to a local file (0600, the studio's own), streaming."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with store().open(name, "rb") as source, open(destination, "wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)
    return destination
