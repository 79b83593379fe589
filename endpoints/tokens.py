"""Deployment tokens: what a deployment's pods show the studio to fetch its code and model
(endpoints.api.io) when its ConfigMap could not carry them."""

from __future__ import annotations

from django.core import signing

from endpoints.models import Deployment, State

DEPLOYMENT_TOKEN = "kdt_"  # noqa: S105 - a prefix, not a secret
_deployment_signer = signing.Signer(salt="kstudio.deployment-token")


def deployment_token(deployment: Deployment) -> str:
    """What a deployment's pods show to fetch its code and model (endpoints.api.io): its id
    and generation signed with the studio's key, so nothing is stored and a later
    generation's token does not open an earlier one's, or the reverse."""
    return DEPLOYMENT_TOKEN + _deployment_signer.sign(f"{deployment.pk}.{deployment.generation}")


def deployment_for(token: str) -> Deployment | None:
    if not token.startswith(DEPLOYMENT_TOKEN):
        return None
    try:
        pk, _, generation = _deployment_signer.unsign(token[len(DEPLOYMENT_TOKEN) :]).partition(".")
        return (
            Deployment.objects.select_related("model")
            .exclude(state=State.DELETING)
            .filter(pk=int(pk), generation=int(generation))
            .first()
        )
    except (signing.BadSignature, ValueError):
        return None
