"""Credentials encrypted at rest (a cluster's kubeconfig, later a datastore's keys).

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) with the keys in
STUDIO_ENCRYPTION_KEYS, newest first: the first encrypts, any decrypts, so keys can be
rotated (`manage.py rotatekeys` re-encrypts with the first). Without that setting, one key
is derived from SECRET_KEY, so the embedded default needs no setup; a studio that sets its
own keys keeps credentials readable across a SECRET_KEY change.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


@cache
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        derived = hashlib.sha256(b"kstudio credentials\0" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.STUDIO_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(text: str) -> str:
    return fernet().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "stored credentials cannot be decrypted with this studio's keys "
            "(STUDIO_ENCRYPTION_KEYS, or SECRET_KEY when that is unset)"
        ) from exc


class EncryptedTextField(models.TextField):
    """Text kept encrypted in the database, plain in Python. Not searchable, by design."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        return None if value is None or value == "" else decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return value if value in (None, "") else encrypt(str(value))
