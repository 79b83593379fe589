"""Stand-ins for Azure ML's curated environments (`AzureML-sklearn-1.5`,
`azureml://registries/azureml/environments/sklearn-1.5/labels/latest`, ...): Azure's own
images are not public, so each family resolves to an image and a package set of ours.
Documented in docs/environments.md; a job on one says so in its log."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class StandIn:
    family: str
    image: str
    packages: tuple[str, ...]


BASE_IMAGE = "python:3.11-slim"
STAND_INS = (
    StandIn("sklearn", BASE_IMAGE, ("scikit-learn~=1.5.0", "pandas", "scipy", "mlflow-skinny")),
    StandIn("lightgbm", BASE_IMAGE, ("lightgbm", "scikit-learn", "pandas", "mlflow-skinny")),
    StandIn("pytorch", BASE_IMAGE, ("torch", "torchvision", "mlflow-skinny")),
    StandIn("tensorflow", BASE_IMAGE, ("tensorflow", "mlflow-skinny")),
    StandIn("minimal", BASE_IMAGE, ()),
)


def stand_in(name: str) -> StandIn | None:
    """The stand-in for a curated environment's name (`AzureML-sklearn-1.5`, `sklearn-1.5`,
    `AzureML-ACPT-pytorch-2.2-cuda12.1`), or None when no family matches."""
    words = set(re.split(r"[-_.]", name.lower()))
    for candidate in STAND_INS:
        if candidate.family in words:
            return candidate
    return None


def families() -> str:
    return ", ".join(s.family for s in STAND_INS)
