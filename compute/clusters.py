"""Clusters and their attachments, for IT-ops: shared by the console, the API and (through
the API) the CLI. Credentials go in encrypted and never come back out."""

from __future__ import annotations

from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from compute import capacity, credentials, extension, instance_types, kube, services
from compute.models import Cluster, ComputeKind, ComputeTarget, Credentials, namespace_validator
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace

MANAGED_LABELS = {"app.kubernetes.io/managed-by": "kubestudio"}


def _model_errors(exc: ValidationError) -> FieldErrors:
    return FieldErrors([(f, m) for f, ms in exc.message_dict.items() for m in ms])


def register(
    name: str,
    kubeconfig: str = "",
    context: str = "",
    *,
    in_cluster: bool = False,
    description: str = "",
    studio_url: str = "",
) -> Cluster:
    """A new cluster from a kubeconfig (its context picked) or from the studio's own pod's
    service account. Not contacted here: `status` says whether it answers."""
    errors: list[tuple[str, str]] = []
    server = ""
    if in_cluster:
        if kubeconfig:
            errors.append(("kubeconfig", "give a kubeconfig or in_cluster, not both"))
    elif not kubeconfig.strip():
        errors.append(("kubeconfig", "required (or in_cluster, inside the cluster)"))
    else:
        try:
            loaded, context = kube.read_kubeconfig(kubeconfig, context)
            server = kube.server_of(loaded, context)
        except kube.ClusterError as exc:
            field, _, message = str(exc).partition(": ")
            errors.append((field, message))
    cluster = Cluster(
        name=name,
        kubeconfig=kubeconfig,
        context=context,
        in_cluster=in_cluster,
        server=server,
        description=description,
        studio_url=studio_url,
    )
    try:
        cluster.full_clean(exclude=["kubeconfig"])
    except ValidationError as exc:
        errors.extend(_model_errors(exc).errors)
    if errors:
        raise FieldErrors(errors)
    with transaction.atomic():
        cluster.save()
        instance_types.ensure_default(cluster)
    return cluster


def delete(cluster: Cluster) -> None:
    attached = list(cluster.attachments.select_related("workspace"))
    if attached:
        names = ", ".join(f"{a.workspace.name}/{a.name}" for a in attached)
        raise Conflict(f"Cluster {cluster.name!r} is attached to {names}: detach them first.")
    cluster.delete()


def status(cluster: Cluster) -> dict[str, Any]:
    # What the credentials may do where the work runs (the extension's reach no further).
    checked = kube.check(cluster, next(iter(attached_namespaces(cluster)), "default"))
    return {
        "reachable": checked.reachable,
        "version": checked.version,
        "message": checked.message,
        "nodes_ready": checked.nodes_ready,
        "allowed": checked.allowed,
        "denied": checked.denied,
    }


def attach(
    workspace: Workspace,
    name: str,
    cluster: Cluster | None,
    namespace: str = "default",
    *,
    create_namespace: bool = False,
    description: str = "",
    image_pull_secret: str = "",
    kubeconfig: str = "",
    context: str = "",
) -> ComputeTarget:
    """Attach a cluster to a workspace as a compute target whose work runs in `namespace`.
    Unlike Azure, the namespace is checked now (or created), not at the first job. Once
    the studio holds only the extension's token, a namespace the extension does not reach
    yet is granted with a cluster admin's `kubeconfig` given here (used once, not kept),
    as an install would."""
    errors: list[tuple[str, str]] = []
    admin = None
    if cluster is None:
        errors.append(("cluster", "required for a kubernetes compute target"))
    elif kubeconfig.strip() and cluster.credentials == Credentials.EXTENSION:
        try:
            admin = credentials.for_act(cluster, kubeconfig, context)
        except FieldErrors as exc:
            errors.extend(exc.errors)
    namespace = namespace or "default"
    try:
        namespace_validator(namespace)
    except ValidationError as exc:
        errors.append(("namespace", exc.messages[0]))
    compute = ComputeTarget(
        workspace=workspace,
        name=name,
        kind=ComputeKind.KUBERNETES,
        cluster=cluster,
        namespace=namespace,
        description=description,
        image_pull_secret=image_pull_secret,
    )
    try:
        compute.full_clean(exclude=["workspace", "cluster"])
    except ValidationError as exc:
        errors.extend(_model_errors(exc).errors)
    if ComputeTarget.objects.filter(workspace=workspace, name=name).exists():
        errors.append(("name", f"a compute target named {name!r} already exists in this workspace"))
    if errors:
        raise FieldErrors(errors)
    assert cluster is not None
    ensure_namespace(cluster, namespace, create=create_namespace)
    if admin is not None:
        _grant(cluster, namespace, admin)
    if cluster.credentials == Credentials.EXTENSION:
        compute.problem = namespace_problem(cluster, namespace)
    if (cluster.settings or {}).get("environmentCache") and not compute.problem:
        # The extension gives each attached namespace its cache; a new one gets it now.
        labels = {**extension.PART_OF, "kstudio.io/cluster": cluster.name}
        claim = extension.cache_claim(namespace, cluster.settings, labels)
        try:
            extension.apply(kube.api_client(cluster), claim)
        except Exception as exc:
            raise kube.refused(cluster, exc) from exc
    with transaction.atomic():
        compute.save()
        services.became_available(compute)
    return compute


def _grant(cluster: Cluster, namespace: str, admin: client.ApiClient) -> None:
    """The extension applied again by an admin, with `namespace` among its namespaces."""
    namespaces = sorted({*attached_namespaces(cluster), namespace})
    try:
        outcome = extension.install(cluster, namespaces, None, admin)
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc
    if outcome.problems or outcome.failures():
        said = "; ".join(outcome.problems + outcome.failures())
        raise FieldErrors([("kubeconfig", f"could not grant namespace {namespace!r}: {said}")])


def ensure_namespace(cluster: Cluster, namespace: str, *, create: bool) -> None:
    """The namespace exists, or is made now when asked; else a clear refusal."""
    try:
        core = client.CoreV1Api(kube.api_client(cluster))
        try:
            core.read_namespace(namespace)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        if not create:
            raise FieldErrors(
                [
                    (
                        "namespace",
                        f"{namespace!r} does not exist in cluster {cluster.name!r}: create it, "
                        "or ask for it to be created (--create-namespace)",
                    )
                ]
            )
        body: Any = {"metadata": {"name": namespace, "labels": MANAGED_LABELS}}
        try:
            core.create_namespace(body)
        except ApiException as exc:
            if exc.status != 409:  # made meanwhile: as good
                raise
    except FieldErrors:
        raise
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc


def changed(cluster: Cluster) -> None:
    """New credentials or settings: each attachment's backend is built again."""
    cluster.attachments.update(updated_at=cluster.updated_at)


# -- the extension --------------------------------------------------------------------------
def attached_namespaces(cluster: Cluster) -> list[str]:
    return sorted(set(cluster.attachments.values_list("namespace", flat=True)))


def install(
    cluster: Cluster, pairs: list[str], kubeconfig: str = "", context: str = ""
) -> extension.Outcome:
    """Apply the extension with these settings (`key=value`, as Azure's names them), with
    the credentials IT-ops gave (at registration, or now: `kubeconfig`). Once it is in
    place the studio keeps only the extension's own ServiceAccount token."""
    try:
        settings = extension.parse_settings(pairs, cluster.settings or {})
    except ValueError as exc:
        raise FieldErrors([(f"set.{key}", message) for key, message in exc.args[0]]) from exc
    api = credentials.for_act(cluster, kubeconfig, context)
    try:
        outcome = extension.install(cluster, attached_namespaces(cluster), settings, api)
        if outcome.problems:
            return outcome
        cluster.settings = settings
        if not outcome.failures():
            credentials.take_own(cluster, api, kubeconfig, context)
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc
    cluster.save()
    changed(cluster)
    refresh_problems(cluster)
    return outcome


def manifests(cluster: Cluster) -> str:
    """The extension as one YAML stream, for GitOps."""
    objects = extension.manifests(cluster, attached_namespaces(cluster))
    return yaml.safe_dump_all(objects, sort_keys=False)


def uninstall(cluster: Cluster, kubeconfig: str = "", context: str = "") -> list[dict[str, str]]:
    """Remove the extension, with an admin's credentials as install: the studio's own
    token goes with it, so it reaches the cluster again only by installing anew."""
    api = credentials.for_act(cluster, kubeconfig, context)
    try:
        return extension.uninstall(cluster, attached_namespaces(cluster), api)
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc


def check_attachments() -> None:
    """Each Kubernetes compute target's namespace still exists (the controller asks now
    and then): what is wrong is kept on the target, shown, and refuses submissions."""
    _check(ComputeTarget.objects.filter(kind=ComputeKind.KUBERNETES))


def refresh_problems(cluster: Cluster) -> None:
    _check(cluster.attachments.all())


def _check(targets: Any) -> None:
    for compute in targets.select_related("cluster"):
        assert compute.cluster is not None
        problem = namespace_problem(compute.cluster, compute.namespace)
        if problem != compute.problem:
            ComputeTarget.objects.filter(pk=compute.pk).update(problem=problem)


def namespace_problem(cluster: Cluster, namespace: str) -> str:
    try:
        api = kube.api_client(cluster)
        found = client.CoreV1Api(api).read_namespace(namespace)
        if found.status and found.status.phase == "Terminating":
            # Deleted, its objects still going: no new pod can be made in it.
            return (
                f"namespace {namespace!r} is being deleted in cluster {cluster.name!r}: "
                "once it is gone, IT-ops can re-create it (cluster install does) or detach "
                "this target"
            )
        if cluster.credentials == Credentials.EXTENSION and not kube.may(
            api, "create", "batch", "jobs", namespace
        ):
            # Attached after the install: only an install by an admin grants it.
            return (
                f"the extension does not reach namespace {namespace!r} yet: IT-ops installs "
                f"it again with a cluster admin's kubeconfig (kstudio cluster install "
                f"{cluster.name} --kubeconfig FILE, or attaches with --kubeconfig), which "
                "grants the studio this namespace"
            )
        return ""
    except ApiException as exc:
        if exc.status == 404:
            return (
                f"namespace {namespace!r} no longer exists in cluster {cluster.name!r}: "
                "IT-ops can re-create it (cluster install does) or detach this target"
            )
        return f"cluster {cluster.name!r}: {kube.in_words(exc)}"
    except Exception as exc:  # unreachable: said, not raised
        return f"cluster {cluster.name!r}: {kube.in_words(exc)}"


def nodes_report(cluster: Cluster) -> dict[str, Any]:
    """The nodes page: each node, and where each of the cluster's instance types fits."""
    try:
        seen = capacity.nodes(cluster)
    except Exception as exc:
        raise kube.refused(cluster, exc) from exc

    def amounts(values: dict[str, Any]) -> dict[str, str]:
        return {k: capacity.shown(v, k) for k, v in values.items()}

    return {
        "nodes": [
            {"name": n.name, "ready": n.ready, "labels": n.labels, "taints": n.taints,
             "allocatable": amounts(n.allocatable), "requested": amounts(n.requested)}
            for n in seen
        ],
        "instance_types": [
            {"name": t.name, **capacity.fit(t, seen)} for t in cluster.instance_types.all()
        ],
        "gpus_advertised": any(n.allocatable.get(capacity.GPU) for n in seen),
    }  # fmt: skip
