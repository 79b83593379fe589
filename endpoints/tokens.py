"""Deployment tokens: what a deployment's pods show the studio to fetch its code and model
(endpoints.api.io) when its ConfigMap could not carry them."""

from __future__ import annotations

from django.utils.crypto import salted_hmac

from endpoints.models import Deployment, State
from studio.tokens import SignedToken

TOKENS = SignedToken("kdt_", salt="kstudio.deployment-token")
# What a router shows a deployment's model servers (endpoints/server.py checks it): they
# answer /score to it alone, not to a job or another workspace's code that finds their port.
SERVER_KEY_HEADER = "X-Kstudio-Server-Key"
SERVER_KEY_VARIABLE = "KSTUDIO_SERVER_KEY"


def server_key(deployment_pk: int) -> str:
    """A deployment's model-server key: derived from the studio's secret (nothing stored;
    every router of the studio computes it), one per deployment."""
    return salted_hmac("kstudio.model-server", str(deployment_pk)).hexdigest()


def deployment_token(deployment: Deployment) -> str:
    """What a deployment's pods show to fetch its code and model (endpoints.api.io): its id
    and generation signed with the studio's key, so nothing is stored and a later
    generation's token does not open an earlier one's, or the reverse."""
    return TOKENS.make(f"{deployment.pk}.{deployment.generation}")


def deployment_for(token: str) -> Deployment | None:
    pk, _, generation = (TOKENS.read(token) or "").partition(".")
    if not (pk.isdigit() and generation.isdigit()):
        return None
    return (
        Deployment.objects.select_related("model")
        .exclude(state=State.DELETING)
        .filter(pk=int(pk), generation=int(generation))
        .first()
    )
