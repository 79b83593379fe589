"""Tokens the studio signs for what is not a person (a job, a deployment, a cluster's
router): the thing's id under a salt of its own, so nothing is stored and the same thing
always gets the same token."""

from __future__ import annotations

from django.core import signing


class SignedToken:
    """A token that is an id signed with the studio's key under a salt of its own, behind
    a prefix that says what it is: nothing stored, nothing to look up but the id."""

    def __init__(self, prefix: str, salt: str) -> None:
        self.prefix = prefix
        self.signer = signing.Signer(salt=salt)

    def make(self, value: str) -> str:
        return self.prefix + self.signer.sign(value)

    def read(self, token: str) -> str | None:
        """The value signed, or None (another kind of token, or a forged one)."""
        if not token.startswith(self.prefix):
            return None
        try:
            return self.signer.unsign(token[len(self.prefix) :])
        except signing.BadSignature:
            return None
