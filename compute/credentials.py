"""The studio's own credentials in a cluster. IT-ops registers a cluster with a kubeconfig
that may do anything; installing the extension makes a ServiceAccount with only the rights
the studio needs, and from then on the studio keeps that account's token and nothing
else, as Argo CD's `cluster add` does. Acts that change those rights (install again,
uninstall) take an admin's kubeconfig for that one act; it is not kept."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import yaml
from kubernetes import client, watch

from compute import kube
from compute.extension import SYSTEM_NAMESPACE, TOKEN_SECRET
from compute.models import Credentials
from studio.errors import FieldErrors

if TYPE_CHECKING:
    from compute.models import Cluster

USER = f"{SYSTEM_NAMESPACE}/kstudio"  # the kubeconfig's user, as kubectl would name it
TOKEN_SECONDS = 30  # how long the token controller may take to fill the Secret


def read_token(api: client.ApiClient) -> str:
    """The token once the controller has written it (watched, not polled)."""
    core = client.CoreV1Api(api)
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_secret,
        SYSTEM_NAMESPACE,
        field_selector=f"metadata.name={TOKEN_SECRET}",
        timeout_seconds=TOKEN_SECONDS,
    ):
        token = (event["object"].data or {}).get("token")
        if token and event["type"] != "DELETED":
            stream.stop()
            return base64.b64decode(token).decode()
    raise kube.ClusterError(
        f"the token controller did not fill Secret {SYSTEM_NAMESPACE}/{TOKEN_SECRET} in "
        f"{TOKEN_SECONDS} s (is the controller manager running?)"
    )


def with_token(kubeconfig: str, context: str, token: str) -> tuple[str, str]:
    """The same cluster entry (server, CA) with the ServiceAccount's token as its user."""
    loaded, context = kube.read_kubeconfig(kubeconfig, context)
    ctx = next(c for c in loaded["contexts"] if c.get("name") == context)["context"]
    entry = next(c for c in loaded.get("clusters") or [] if c.get("name") == ctx.get("cluster"))
    own = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [entry],
        "users": [{"name": USER, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": entry["name"], "user": USER,
                                                    **({"namespace": ctx["namespace"]}
                                                       if ctx.get("namespace") else {})}}],
        "current-context": context,
    }  # fmt: skip
    return yaml.safe_dump(own), context


def for_act(cluster: Cluster, kubeconfig: str, context: str = "") -> client.ApiClient:
    """A client for an act that changes the studio's rights: the admin's kubeconfig given
    with it (not kept), else the stored one while it is still the one IT-ops gave."""
    if not kubeconfig.strip():
        if cluster.credentials == Credentials.EXTENSION:
            raise FieldErrors([("kubeconfig", (
                "required: since the extension was installed the studio holds only its "
                "ServiceAccount's rights, which cannot change themselves; give a cluster "
                "admin's kubeconfig for this (it is used once, not kept)"))])  # fmt: skip
        return kube.api_client(cluster)
    try:
        loaded, context = kube.read_kubeconfig(kubeconfig, context)
    except kube.ClusterError as exc:
        field, _, message = str(exc).partition(": ")
        raise FieldErrors([(field, message)]) from None
    server = kube.server_of(loaded, context)
    if server.rstrip("/") != cluster.server.rstrip("/"):
        said = f"its server {server!r} is not cluster {cluster.name!r}'s ({cluster.server!r})"
        raise FieldErrors([("kubeconfig", said)])
    return kube.client_from(loaded, context)


def take_own(cluster: Cluster, api: client.ApiClient, kubeconfig: str, context: str) -> None:
    """After an install: keep the ServiceAccount's token in place of what was given."""
    if cluster.in_cluster:
        return  # the studio's own pod's account already
    given = bool(kubeconfig.strip())
    cluster.kubeconfig, cluster.context = with_token(
        kubeconfig if given else cluster.kubeconfig,
        context if given else cluster.context,
        read_token(api),
    )
    cluster.credentials = Credentials.EXTENSION
