"""Environments: registering versions, and resolving what a job names (a workspace
environment, a curated one, or an inline mapping) into what its compute runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import IO, Any

from django.db import IntegrityError, transaction

from compute.backends import artifacts
from environments import curated
from environments.models import Environment
from environments.spec import CondaPlan, conda_plan, parse_environment, parse_ref
from studio import assets
from studio.documents import DocumentError
from studio.errors import Conflict, FieldErrors
from studio.models import Workspace


def create_environment(
    workspace: Workspace, user: Any, data: dict[str, Any], context: IO[bytes] | None = None
) -> Environment:
    """Register an environment version. A `build` context comes as `context` (the folder
    as a .tar.gz) and is kept in the artifact store."""
    document = parse_environment(data)
    assert document.name is not None
    version = assets.new_version(Environment, workspace, document.name, document.version)
    build = None
    if document.build is not None:
        if context is None:
            raise FieldErrors(
                [("build.path", "the build context is uploaded with the environment "
                  "(kstudio environment create sends the folder)")]
            )  # fmt: skip
        name = f"environments/{workspace.pk}/{document.name}/{version}/context.tar.gz"
        digest = hashlib.sha256()
        while chunk := context.read(1024 * 1024):
            digest.update(chunk)
        context.seek(0)
        build = {
            "context": artifacts.publish(name, context),
            "dockerfile_path": document.build.dockerfile_path,
            # The image is built once per context: its tag is this hash.
            "hash": digest.hexdigest(),
        }
    try:
        with transaction.atomic():
            return Environment.objects.create(
                workspace=workspace, name=document.name, version=version,
                image=document.image or "", conda_file=document.conda_file, build=build,
                description=document.description, tags=document.tags,
                inference_config=document.inference_config,
                created_by=user if getattr(user, "is_authenticated", False) else None,
            )  # fmt: skip
    except IntegrityError as exc:
        made = f"{document.name}:{version}"
        raise Conflict(f"Environment {made} was just made by another request.") from exc


# -- what a job runs in ----------------------------------------------------------------------
@dataclass
class Resolved:
    """An environment as a compute needs it."""

    label: str  # how the job page names it: "my-env:1", "AzureML-sklearn-1.5", "inline"
    image: str = ""
    plan: CondaPlan | None = None
    build: dict[str, Any] | None = None
    curated: bool = False
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What the job keeps of it (shown on its page, read when it starts)."""
        return {
            "label": self.label,
            "image": self.image,
            "python": self.plan.python if self.plan else None,
            "requirements": self.plan.requirements if self.plan else [],
            "key": self.plan.key if self.plan else "",
            "build": self.build,
            "curated": self.curated,
            "notes": self.notes,
        }


def resolve(workspace: Workspace, named: str | dict[str, Any] | None) -> Resolved | None:
    """What a job's `environment` names. Raises DocumentError with `environment...` paths."""
    if named is None:
        return None
    if isinstance(named, dict):
        try:
            document = parse_environment(named, named=False)
        except DocumentError as exc:
            raise DocumentError([(f"environment.{f}", m) for f, m in exc.errors]) from exc
        if document.build is not None:
            raise DocumentError(
                [("environment.build", "an inline build is not supported; register the "
                  "environment (kstudio environment create) and name it")]
            )  # fmt: skip
        plan = conda_plan(document.conda_file) if document.conda_file else None
        return Resolved("inline", document.image or "", plan)
    try:
        ref = parse_ref(named)
    except ValueError as exc:
        raise DocumentError([("environment", str(exc))]) from exc
    if ref.registry:
        if ref.registry != "azureml":
            raise DocumentError(
                [("environment", f"registry {ref.registry!r} is not supported; only azureml's "
                  "curated environments resolve (to stand-ins)")]
            )  # fmt: skip
        return _curated(ref.name)
    try:
        environment = assets.find(Environment, workspace, ref.name, ref.version)
    except ValueError as exc:
        if ref.name.lower().startswith("azureml-"):
            return _curated(ref.name)
        raise DocumentError([("environment", str(exc))]) from exc
    plan = conda_plan(environment.conda_file) if environment.conda_file else None
    return Resolved(str(environment), environment.image, plan, environment.build)


def _curated(name: str) -> Resolved:
    found = curated.stand_in(name)
    if found is None:
        raise DocumentError(
            [("environment", f"{name!r} is not a curated environment this studio stands in "
              f"for; families: {curated.families()}")]
        )  # fmt: skip
    plan = CondaPlan(None, list(found.packages))
    note = f"{name} is a stand-in for Azure's curated environment: image {found.image}" + (
        f" with {', '.join(found.packages)}" if found.packages else ""
    )
    return Resolved(name, found.image, plan, curated=True, notes=[note])
