"""The inference router: `POST /api/v1/endpoint/<name>/score`, as Azure's Kubernetes
router serves it. It checks the caller's key, picks a deployment (by the traffic split,
or the `azureml-model-deployment` header), waits for room in it, forwards the request to
one of its instances and answers with Azure's status codes:

- 401: no key, or a wrong one (nothing reaches the model);
- 404: no such endpoint, or no deployment takes traffic (or the one the header names);
- 502: the scoring script's `run()` raised, or no instance could be reached;
- 503 (429 on `type: managed`): more requests than the deployment's instances x
  `max_concurrent_requests_per_instance` could take within `max_queue_wait_ms`;
- 504: no answer within `request_timeout_ms`.

Every answer says which deployment gave it (`azureml-model-deployment`). Mirrored
traffic is copied to its deployment and its answers dropped.

In-flight counts are this process's: the embedded mode has one, which is what the
counts and autoscaling of a later step read.
"""

from __future__ import annotations

import hmac
import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from endpoints import services
from endpoints.models import Deployment, Endpoint, State

DEPLOYMENT_HEADER = "azureml-model-deployment"
_http = httpx.Client(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))
_mirror = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mirror")
_slots: dict[tuple[int, int], threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()
_turns = itertools.count()


@dataclass(frozen=True)
class Target:
    deployment: Deployment

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.deployment.document.get("request_settings") or {})


def _answer(status: int, message: str, deployment: str = "") -> JsonResponse:
    response = JsonResponse({"message": message}, status=status)
    if deployment:
        response[DEPLOYMENT_HEADER] = deployment
    return response


def _authorized(endpoint: Endpoint, request: HttpRequest) -> bool:
    given = request.headers.get("Authorization", "")
    if not given.lower().startswith("bearer "):
        return False
    key = given[7:].strip()
    if endpoint.auth_mode == "aml_token":
        return services.token_valid(endpoint, key)
    keys = services.keys_of(endpoint)
    return any(hmac.compare_digest(key, k) for k in keys.values() if k)


def _slot(deployment: Deployment) -> threading.BoundedSemaphore:
    """Room for the deployment's instances x max concurrent requests per instance."""
    per = int(
        (deployment.document.get("request_settings") or {}).get(
            "max_concurrent_requests_per_instance", 1
        )
    )
    room = max(1, len(deployment.instances)) * per
    key = (deployment.pk, room)
    with _slots_lock:
        slot = _slots.get(key)
        if slot is None:
            slot = _slots[key] = threading.BoundedSemaphore(room)
        return slot


def _choose(endpoint: Endpoint, deployments: dict[str, Deployment], named: str) -> str | None:
    if named:
        return named if named in deployments else None
    shares = [(name, share) for name, share in endpoint.traffic.items() if share > 0]
    if not shares:
        return None
    pick = random.uniform(0, sum(share for _, share in shares))  # noqa: S311 - not security
    for name, share in shares:
        pick -= share
        if pick <= 0:
            return name
    return shares[-1][0]


def _post(url: str, body: bytes, content_type: str, timeout: float) -> httpx.Response:
    return _http.post(
        url + "/score", content=body, headers={"Content-Type": content_type}, timeout=timeout
    )


def forward(deployment: Deployment, body: bytes, content_type: str) -> HttpResponse:
    """One request to one of the deployment's instances, within its timeout."""
    settings = deployment.document.get("request_settings") or {}
    timeout = int(settings.get("request_timeout_ms", 5000)) / 1000
    instances = deployment.instances
    if not instances:
        return _answer(
            502, f"Deployment {deployment.name} has no instance running.", deployment.name
        )
    turn = next(_turns)
    try:
        try:
            answer = _post(instances[turn % len(instances)]["url"], body, content_type, timeout)
        except httpx.ConnectError:
            # Nothing was sent: an instance that a rollout just replaced. Once more, on
            # the instances the deployment has now.
            deployment.refresh_from_db(fields=["instances"])
            if not deployment.instances:
                raise
            current = deployment.instances[turn % len(deployment.instances)]["url"]
            answer = _post(current, body, content_type, timeout)
    except httpx.TimeoutException:
        return _answer(
            504,
            f"The deployment did not answer within {int(timeout * 1000)} ms (request_timeout_ms).",
            deployment.name,
        )
    except httpx.HTTPError as exc:
        return _answer(502, f"The deployment could not be reached: {exc}", deployment.name)
    status = 502 if answer.status_code >= 500 else answer.status_code
    response = HttpResponse(
        answer.content,
        status=status,
        content_type=answer.headers.get("content-type", "application/json"),
    )
    response[DEPLOYMENT_HEADER] = deployment.name
    return response


@csrf_exempt  # key authentication only: no cookie can make a request here
def score(request: HttpRequest, name: str) -> HttpResponse:
    if request.method != "POST":
        return _answer(405, "Score with POST.")
    endpoint = Endpoint.objects.filter(name=name).exclude(state=State.DELETING).first()
    if endpoint is None:
        return _answer(404, f"No endpoint named {name}.")
    if not _authorized(endpoint, request):
        return _answer(401, "Give the endpoint's key (or token) as Authorization: Bearer <key>.")
    named = request.headers.get(DEPLOYMENT_HEADER, "")
    return dispatch(endpoint, request.body, request.content_type or "application/json", named)


def dispatch(endpoint: Endpoint, body: bytes, content_type: str, named: str = "") -> HttpResponse:
    """Route one authorized request: a deployment by the split (or `named`), room in it,
    an instance of it. Shared with the endpoint page's test console."""
    deployments = {
        d.name: d for d in endpoint.deployments.exclude(state=State.DELETING) if d.instances
    }
    chosen = _choose(endpoint, deployments, named)
    if chosen is None:
        if named:
            return _answer(404, f"The endpoint has no running deployment named {named}.")
        return _answer(404, "No deployment of the endpoint takes traffic; set its traffic.")
    deployment = deployments[chosen]
    if not named:
        for mirrored, share in endpoint.mirror_traffic.items():
            target = deployments.get(mirrored)
            if target is not None and random.uniform(0, 100) < share:  # noqa: S311
                _mirror.submit(forward, target, body, content_type)
    settings = deployment.document.get("request_settings") or {}
    slot = _slot(deployment)
    if not slot.acquire(timeout=int(settings.get("max_queue_wait_ms", 500)) / 1000):
        status = 429 if deployment.type == "managed" else 503
        return _answer(
            status,
            "The deployment is busy: more requests than its instances take "
            "(max_concurrent_requests_per_instance, max_queue_wait_ms).",
            deployment.name,
        )
    try:
        return forward(deployment, body, content_type)
    finally:
        slot.release()
