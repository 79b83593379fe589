"""Online endpoints and deployments: creating and updating them (checked whole before
anything is kept), their keys, the traffic split. Called by the API, the pages, the CLI
(through the API) and the runner alike; running them is the runner's (runner.py)."""

from __future__ import annotations

import json
import secrets
import tarfile
import time
from typing import IO, Any, Literal

from django.conf import settings
from django.core import signing
from django.core.files import File
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from compute import services as compute_services
from compute.inference import has_router
from compute.models import ComputeKind, ComputeTarget, InstanceType
from compute.resources import DEFAULT_INSTANCE_TYPE
from endpoints import kube, spec
from endpoints.models import Deployment, Endpoint, State
from environments import services as environment_services
from registry import services as registry
from registry import spec as registry_spec
from registry.models import Model
from studio import assets
from studio.documents import DocumentError
from studio.errors import Conflict, FieldErrors
from studio.events import publish
from studio.models import Workspace

RUNNER_GROUP = "deployments"
MAX_CODE_BYTES = 100 * 1024 * 1024


def wake() -> tuple[str, dict[str, Any]]:
    return (RUNNER_GROUP, {"type": "deployments.wake"})


# -- endpoints -------------------------------------------------------------------------------
def new_keys() -> str:
    return json.dumps(
        {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)}
    )


def keys_of(endpoint: Endpoint) -> dict[str, str]:
    return dict(json.loads(endpoint.keys or "{}"))


def regenerate_key(endpoint: Endpoint, key_type: str) -> dict[str, str]:
    """A new key of one kind; the other keeps working, so clients move over one by one."""
    if key_type not in ("primary", "secondary"):
        raise FieldErrors([("key_type", "use primary or secondary")])
    keys = keys_of(endpoint)
    keys[key_type] = secrets.token_urlsafe(32)
    endpoint.keys = json.dumps(keys)
    endpoint.save(update_fields=["keys", "updated_at"])
    return keys


def _compute(workspace: Workspace, name: str | None) -> ComputeTarget:
    if name:
        found = ComputeTarget.objects.filter(workspace=workspace, name=name).first()
        if found is None:
            raise FieldErrors([("compute", f"no compute target named {name!r} in this workspace")])
    else:
        found = compute_services.default_compute(workspace)
        if found is None:
            raise FieldErrors([("compute", "the workspace has no compute target; name one")])
    cluster = found.cluster
    if cluster is not None and not (cluster.settings or {}).get("enableInference"):
        raise FieldErrors(
            [
                (
                    "compute",
                    f"cluster {cluster.name!r} serves no online endpoints: its extension is "
                    "installed without enableInference (IT-ops: kstudio cluster install "
                    f"{cluster.name} --set enableInference=true)",
                )
            ]
        )
    return found


def save_endpoint(workspace: Workspace, user: Any, data: dict[str, Any]) -> Endpoint:
    """Create an endpoint, or update the one of that name in this workspace (its compute
    never changes). Traffic may name only the endpoint's deployments."""
    document = spec.parse_endpoint(data)
    existing = Endpoint.objects.filter(name=document.name).first()
    if existing is not None and existing.workspace_id != workspace.pk:
        raise _name_taken(document.name)  # saying nothing of where, or of its state
    if existing is not None and existing.state == State.DELETING:
        raise FieldErrors(
            [
                (
                    "name",
                    f"endpoint {document.name!r} is being deleted; its name "
                    "is free once its deployments have stopped",
                )
            ]
        )
    compute = (
        _compute(workspace, document.compute) if existing is None or document.compute else None
    )
    if existing is not None and compute is not None and compute.pk != existing.compute_id:
        raise FieldErrors(
            [("compute", "an endpoint's compute never changes; make another endpoint")]
        )
    deployments = set(existing.deployments.values_list("name", flat=True)) if existing else set()
    _check_traffic(document, deployments)
    fields = {
        "auth_mode": document.auth_mode,
        "traffic": document.traffic,
        "mirror_traffic": document.mirror_traffic,
        "description": document.description,
        "tags": document.tags,
        "properties": document.properties,
    }
    if existing is not None:
        for key, value in fields.items():
            setattr(existing, key, value)
        existing.save()
        return existing
    assert compute is not None
    try:
        with transaction.atomic():
            return Endpoint.objects.create(
                workspace=workspace,
                name=document.name,
                compute=compute,
                keys=new_keys(),
                created_by=user if getattr(user, "is_authenticated", False) else None,
                **fields,
            )
    except IntegrityError as exc:  # made by another request meanwhile
        raise _name_taken(document.name) from exc


def _name_taken(name: str) -> FieldErrors:
    """Endpoint names are the scoring URI's, unique across the studio as Azure's are in a
    region: one taken elsewhere is 'not available', with no word of whose it is."""
    return FieldErrors(
        [("name", f"{name!r} is not available: endpoint names are unique across the studio")]
    )


def _check_traffic(document: spec.EndpointDocument, deployments: set[str]) -> None:
    errors = [
        (f"{field}.{name}", f"the endpoint has no deployment named {name!r}")
        for field, shares in (
            ("traffic", document.traffic),
            ("mirror_traffic", document.mirror_traffic),
        )
        for name in shares
        if name not in deployments
    ]
    if errors:
        raise FieldErrors(errors)


def set_traffic(
    endpoint: Endpoint, traffic: dict[str, int], mirror: dict[str, int] | None = None
) -> Endpoint:
    """Move traffic (`--traffic "blue=90 green=10"`): checked as the whole endpoint is."""
    data = {
        "name": endpoint.name,
        "auth_mode": endpoint.auth_mode,
        "traffic": traffic,
        "mirror_traffic": endpoint.mirror_traffic if mirror is None else mirror,
        "description": endpoint.description,
        "tags": endpoint.tags,
        "properties": endpoint.properties,
    }
    return save_endpoint(endpoint.workspace, None, data)


def delete_endpoint(endpoint: Endpoint) -> None:
    """Its deployments stop (the runner sees them go) and it is forgotten."""
    with transaction.atomic():
        endpoint.deployments.update(state=State.DELETING)
        publish(wake())
        endpoint.state = State.DELETING
        endpoint.save(update_fields=["state", "updated_at"])


# -- deployments -----------------------------------------------------------------------------
def save_deployment(
    workspace: Workspace,
    user: Any,
    data: dict[str, Any],
    *,
    code: IO[bytes] | None = None,
    model_upload: IO[bytes] | None = None,
    model_is_folder: bool = True,
    all_traffic: bool = False,
) -> Deployment:
    """Create a deployment, or update it (a rollout: the runner starts the new instances
    before it stops the old). Everything is checked before anything is kept."""
    document = spec.parse_deployment(data)
    endpoint = Endpoint.objects.filter(workspace=workspace, name=document.endpoint_name).first()
    if endpoint is None or endpoint.state == State.DELETING:
        raise FieldErrors(
            [
                (
                    "endpoint_name",
                    f"no endpoint named {document.endpoint_name!r} in "
                    "this workspace; create it first",
                )
            ]
        )
    kind: Literal["kubernetes", "managed"] = (
        "kubernetes" if endpoint.compute.kind == ComputeKind.KUBERNETES else "managed"
    )
    if document.type is not None and document.type != kind and kind == "kubernetes":
        raise FieldErrors([("type", f"the endpoint runs on Kubernetes compute; use type {kind}")])
    document.type = document.type or kind
    errors: list[tuple[str, str]] = []
    if document.code_configuration is not None and code is None:
        errors.append(
            (
                "code_configuration.code",
                "the code folder is uploaded with the "
                "deployment (kstudio online-deployment create sends it)",
            )
        )
    model = named_model(workspace, document.model, errors)
    if isinstance(document.model, spec.InlineModel) and model_upload is None:
        path = document.model.path
        if "://" not in path and not path.startswith("azureml:"):
            errors.append(
                (
                    "model.path",
                    "the model's files are uploaded with the deployment "
                    "(kstudio online-deployment create sends them)",
                )
            )
    instance_type = _instance_type(endpoint.compute, document, errors)
    environment = None
    try:
        environment = environment_services.resolve(workspace, document.environment)
    except DocumentError as exc:
        errors.extend(exc.errors)
    if code is not None and document.code_configuration is not None:
        errors.extend(check_code(code, document.code_configuration.scoring_script))
    if kind == "kubernetes":
        model_size = model.size if model is not None else _size(model_upload)
        problem = kube.too_large(model_size or 0, _size(code), endpoint.compute)
        if problem:
            errors.append(("model", problem))
    if errors:
        raise FieldErrors(errors)
    if isinstance(document.model, spec.InlineModel):  # registered last: nothing half-kept
        model = register_inline(
            workspace,
            user,
            document.model,
            f"{document.endpoint_name}-{document.name}",
            model_upload,
            model_is_folder,
        )
    existing = endpoint.deployments.filter(name=document.name).first()
    if instance_type is not None:
        document.instance_type = instance_type.name
    fields = {
        "type": document.type,
        "document": document.model_dump(mode="json", by_alias=True, exclude_none=True),
        "model": model,
        "environment_used": environment.record() if environment else None,
    }
    with transaction.atomic():
        if existing is None:
            deployment = Deployment.objects.create(
                endpoint=endpoint, name=document.name, state=State.CREATING, **fields
            )
            _record(deployment, f"created, serving {_label(model)}")
        else:
            deployment = existing
            for key, value in fields.items():
                setattr(deployment, key, value)
            _cancel_rollout(deployment)
            deployment.state = State.UPDATING
            deployment.generation += 1
            deployment.error_code = deployment.reason = ""
            _record(deployment, f"updated, serving {_label(model)}")
        if code is not None:
            code.seek(0)
            name = f"deployments/{deployment.pk}/{deployment.generation}/code.tar.gz"
            deployment.code = storages["artifacts"].save(name, File(code))
        elif existing is None or document.code_configuration is None:
            deployment.code = ""
        deployment.save()
        if all_traffic:
            Endpoint.objects.filter(pk=endpoint.pk).update(traffic={document.name: 100})
        publish(wake())
    return deployment


MAX_HISTORY = 100


def _instance_type(
    compute: ComputeTarget, document: spec.DeploymentDocument, errors: list[tuple[str, str]]
) -> InstanceType | None:
    """The instance type a deployment runs as: the one named (a managed deployment's
    Azure VM size through STUDIO_VM_SIZES, the table IT-ops keeps), else
    defaultinstancetype; refused with the list of those offered."""
    wanted = document.instance_type or DEFAULT_INSTANCE_TYPE
    if document.type == "managed" and wanted in settings.STUDIO_VM_SIZES:
        wanted = settings.STUDIO_VM_SIZES[wanted]
    found = compute.instance_types().filter(name=wanted).first()
    if found is None:
        offered = ", ".join(compute.instance_types().values_list("name", flat=True))
        mapped = ", ".join(sorted(settings.STUDIO_VM_SIZES)) or "none"
        errors.append(
            (
                "instance_type",
                f"{document.instance_type!r} is not offered on compute "
                f"{compute.name!r} (instance types: {offered}; Azure VM sizes mapped "
                f"for managed deployments: {mapped})",
            )
        )
    return found


def _label(model: Model | None) -> str:
    return f"{model.name}:{model.version}" if model else "its scoring script"


def _cancel_rollout(deployment: Deployment) -> None:
    """A generation still on its way up when a newer one is asked for is dropped (the
    runner stops its instances): Azure's Canceled, in the history."""
    if deployment.state in (State.CREATING, State.UPDATING):
        _record(deployment, f"{State.CANCELED}: superseded before it served")


def _record(deployment: Deployment, what: str) -> None:
    entry = {"at": timezone.now().isoformat(), "generation": deployment.generation, "what": what}
    deployment.history = [*deployment.history, entry][-MAX_HISTORY:]


def follows_latest(document: dict[str, Any]) -> str | None:
    """The model name a deployment follows (`model: azureml:NAME@latest`), if it does."""
    model = document.get("model")
    if isinstance(model, str) and model.endswith("@latest"):
        return model.removeprefix("azureml:").removesuffix("@latest")
    return None


def model_registered(model: Model) -> None:
    """A new version of a model: the deployments that follow its latest version roll to
    it (STUDIO_MODEL_REGISTERED), each a rollout recorded in its history."""
    followers = Deployment.objects.filter(
        endpoint__workspace_id=model.workspace_id,
        state__in=(State.SUCCEEDED, State.FAILED, State.CREATING, State.UPDATING),
    ).exclude(model=model)
    rolled = False
    for deployment in followers.select_related("endpoint"):
        if follows_latest(deployment.document) != model.name:
            continue
        with transaction.atomic():
            deployment.model = model
            _cancel_rollout(deployment)
            deployment.state = State.UPDATING
            deployment.generation += 1
            deployment.error_code = deployment.reason = ""
            _record(deployment, f"rolled to {model.name}:{model.version}, its latest version")
            deployment.save()
        rolled = True
    if rolled:
        publish(wake())


def compute_in_use(compute: ComputeTarget) -> str | None:
    """Endpoints on a compute target keep it (STUDIO_COMPUTE_IN_USE)."""
    names = list(compute.endpoints.exclude(state=State.DELETING).values_list("name", flat=True))
    names += [str(d) for d in compute.batch_deployments.select_related("endpoint")]
    return f"serves endpoints {', '.join(names)}" if names else None


def named_model(
    workspace: Workspace, named: str | spec.InlineModel | None, errors: list[tuple[str, str]]
) -> Model | None:
    """The registered version a deployment names (azureml:NAME:VERSION, NAME@latest)."""
    if not isinstance(named, str):
        return None
    try:
        name, version = registry_spec.parse_ref(named)
        found = assets.find(Model, workspace, name, version)
    except (ValueError, DocumentError) as exc:
        message = exc.errors[0][1] if isinstance(exc, DocumentError) else str(exc)
        errors.append(("model", message))
        return None
    assert isinstance(found, Model)
    return found


def register_inline(
    workspace: Workspace,
    user: Any,
    inline: spec.InlineModel,
    default_name: str,
    upload: IO[bytes] | None,
    is_folder: bool,
) -> Model:
    """An inline model, registered as a version of `default_name`,
    `<endpoint>-<deployment>` (Azure registers inline models anonymously)."""
    data = {
        "name": inline.name or default_name,
        "path": inline.path,
        "type": inline.type,
        "description": inline.description,
    }
    try:
        return registry.create_model(workspace, user, data, upload, upload_is_folder=is_folder)
    except FieldErrors as exc:
        raise FieldErrors([(f"model.{field}", message) for field, message in exc.errors]) from exc
    except Conflict as exc:
        raise FieldErrors([("model", str(exc))]) from exc


def _size(upload: IO[bytes] | None) -> int:
    if upload is None:
        return 0
    at = upload.tell()
    size = upload.seek(0, 2)
    upload.seek(at)
    return size


def check_code(code: IO[bytes], script: str) -> list[tuple[str, str]]:
    """The code archive must be one, and hold the scoring script."""
    code.seek(0)
    try:
        with tarfile.open(fileobj=code) as archive:
            names = {m.name.removeprefix("./") for m in archive.getmembers() if m.isfile()}
    except tarfile.TarError as exc:
        return [("code_configuration.code", f"the code archive cannot be read: {exc}")]
    finally:
        code.seek(0)
    if script.removeprefix("./") not in names:
        return [("code_configuration.scoring_script", f"{script!r} is not in the code folder")]
    return []


def delete_deployment(deployment: Deployment) -> None:
    """Refused while it takes live traffic (Azure's rule): move the traffic first."""
    endpoint = deployment.endpoint
    if endpoint.traffic.get(deployment.name) or endpoint.mirror_traffic.get(deployment.name):
        raise Conflict(
            f"Deployment {deployment.name} takes {endpoint.traffic.get(deployment.name) or 0}% "
            "of the endpoint's traffic; set its traffic to 0 first."
        )
    deployment.state = State.DELETING
    deployment.save(update_fields=["state", "updated_at"])
    publish(wake())


# -- aml_token mode --------------------------------------------------------------------------
TOKEN_SECONDS = 3600
_TOKEN_SALT = "kstudio.endpoint-token"  # noqa: S105 - a salt's name, not a secret


def token_key(endpoint_pk: int) -> str:
    """The key an endpoint's tokens are signed with: derived from the studio's, one per
    endpoint, so a router outside the studio (in a cluster) is given the key of the
    endpoints it routes to and can check their tokens, and no other's."""
    return salted_hmac(_TOKEN_SALT, str(endpoint_pk)).hexdigest()


def issue_token(endpoint: Endpoint) -> dict[str, Any]:
    """A short-lived token for an aml_token endpoint (Azure's shape); signed by the studio,
    so the router checks it without a lookup."""
    now = int(time.time())
    token = signing.dumps({"endpoint": endpoint.pk}, key=token_key(endpoint.pk), salt=_TOKEN_SALT)
    return {
        "accessToken": token,
        "tokenType": "Bearer",
        "expiryTimeUtc": now + TOKEN_SECONDS,
        "refreshAfterTimeUtc": now + TOKEN_SECONDS // 2,
    }


def token_valid_for(endpoint_pk: int, key: str, token: str) -> bool:
    """Whether `token` is a live token of that endpoint, `key` being its token_key."""
    try:
        data = signing.loads(token, key=key, salt=_TOKEN_SALT, max_age=TOKEN_SECONDS)
    except signing.BadSignature:
        return False
    return isinstance(data, dict) and data.get("endpoint") == endpoint_pk


def scoring_uri(endpoint: Endpoint, base: str) -> str:
    """Where clients score: on a cluster with its own router (enableInference), that
    router, at the name it serves (sslCname) or else its Service's address, as Azure shows
    it; else STUDIO_INFERENCE_URL (the router's external address), else the studio's
    (STUDIO_PUBLIC_URL, else `base`: the address the request came to)."""
    cluster = endpoint.compute.cluster
    extension = (cluster.settings or {}) if cluster is not None else {}
    inside = has_router(extension)
    if inside and extension.get("sslCname"):
        root = f"https://{extension['sslCname']}"
    elif inside and cluster is not None and cluster.router_url:
        root = cluster.router_url
    else:
        root = (settings.STUDIO_INFERENCE_URL or settings.STUDIO_PUBLIC_URL or base).rstrip("/")
    return f"{root}/api/v1/endpoint/{endpoint.name}/score"
