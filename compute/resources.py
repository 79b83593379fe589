"""Instance-type resources, in the shape of Azure ML's InstanceType CRD.

spec:
  nodeSelector: {label: value}
  resources:
    requests: {cpu: "100m", memory: "2Gi"}
    limits:   {cpu: "2", memory: "2Gi", nvidia.com/gpu: 1}
"""

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from kubernetes.utils.quantity import parse_quantity

RESOURCE_NAMES = ("cpu", "memory", "nvidia.com/gpu")

# Azure ML's defaultinstancetype, created with every cluster.
DEFAULT_INSTANCE_TYPE = "defaultinstancetype"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("100m", "2Gi", 4) as a number; ValueError when malformed."""
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as 2, 500m or 4Gi")
    result: Decimal = parse_quantity(value)
    return result


def validate_resources(value: Any) -> None:
    """Raise a ValidationError naming every bad field of a `resources` mapping."""
    if not isinstance(value, dict):
        raise ValidationError("resources: must be a mapping with requests and/or limits.")
    errors: list[str] = []
    for key in value:
        if key not in ("requests", "limits"):
            errors.append(f"resources.{key}: unknown field; use requests or limits.")
    parsed: dict[str, dict[str, Decimal]] = {}
    for section in ("requests", "limits"):
        items = value.get(section) or {}
        if not isinstance(items, dict):
            errors.append(f"resources.{section}: must be a mapping.")
            continue
        parsed[section] = {}
        for name, raw in items.items():
            if name not in RESOURCE_NAMES:
                errors.append(
                    f"resources.{section}.{name}: unknown resource; use one of "
                    + ", ".join(RESOURCE_NAMES)
                    + "."
                )
                continue
            try:
                amount = quantity(raw)
            except (ValueError, TypeError, ArithmeticError):
                errors.append(
                    f"resources.{section}.{name}: {raw!r} is not a quantity "
                    "(examples: 2, 500m, 4Gi)."
                )
                continue
            if amount <= 0:
                errors.append(f"resources.{section}.{name}: must be greater than zero.")
            elif name == "nvidia.com/gpu" and amount != amount.to_integral_value():
                errors.append(f"resources.{section}.{name}: must be a whole number.")
            parsed[section][name] = amount
    for name, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and request > limit:
            errors.append(f"resources.requests.{name}: must not exceed the limit ({limit}).")
    if errors:
        raise ValidationError(errors)


def validate_node_selector(value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError("nodeSelector: must map label names to string values.")
