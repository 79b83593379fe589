"""MLflow's filter language, as `mlflow.search_runs(filter_string=...)` writes it:
clauses joined by AND, each `<entity>.<key> <comparator> <value>`:

    metrics.rmse < 0.5 and params.model = 'tree' and tags.`team name` != 'blue'
    attributes.status = 'FINISHED' and attributes.run_name LIKE 'fit%'

turned into a database filter on the runs (params, tags and each metric's latest value
are columns of the run), so a search never reads metric points. The same language, with
bare attribute names (`name = 'x' and tags.stage = 'prod'`), searches logged models and
the model registry: each passes its own `Fields`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, FloatField, Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast

from tracking.errors import invalid

ENTITIES = {
    "metric": "metrics", "metrics": "metrics",
    "param": "params", "params": "params", "parameter": "params", "parameters": "params",
    "tag": "tags", "tags": "tags",
    "attribute": "attributes", "attributes": "attributes", "attr": "attributes",
    "run": "attributes",
}  # fmt: skip


@dataclass(frozen=True)
class Fields:
    """What a filter may name: attributes (filter key -> model field), which of them are
    numbers, and whether metrics (each one's latest value, in `latest_metrics`) apply."""

    attributes: dict[str, str]
    numeric: frozenset[str] = field(default_factory=frozenset)
    metrics: bool = True
    # Whether `tags.x != 'v'` matches what has no tag x. The model registry's does: the
    # client itself adds `tag.mlflow.prompt.is_prompt != 'true'` to every model search.
    untagged_differs: bool = False


RUNS = Fields(
    {"status": "status", "run_name": "name", "run_id": "run_id", "user_id": "user_id",
     "start_time": "start_time", "end_time": "end_time"},
    frozenset({"start_time", "end_time"}),
)  # fmt: skip
COMPARATORS = {"=": "exact", "!=": "exact", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}

_CLAUSE = re.compile(
    r"""\s*(?:(?P<entity>[A-Za-z_]+)\.)?(?P<key>`[^`]+`|"[^"]+"|[A-Za-z0-9_.\-/:]+)\s*"""
    r"""(?P<op>!=|<=|>=|=|<|>|(?i:NOT\s+ILIKE|NOT\s+LIKE|ILIKE|LIKE))\s*"""
    r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|-?[0-9.eE+\-]+)\s*"""
)
_AND = re.compile(r"\s*(?i:AND)\s+")
CLAUSE_FORM = "<metrics|params|tags|attributes>.<key> <comparator> <value>"


def _like(pattern: str) -> str:
    """SQL LIKE ('%', '_') as an anchored regular expression."""
    return (
        "^"
        + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        + "$"
    )


def parse(text: str) -> list[tuple[str, str, str, str]]:
    """(entity, key, comparator, value) for each clause; INVALID_PARAMETER_VALUE naming
    the part that cannot be read."""
    clauses = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _CLAUSE.match(text, position)
        if match is None:
            where = text[position : position + 40]
            raise invalid(f"Invalid filter at {where!r}: expected " + CLAUSE_FORM)
        entity = ENTITIES.get((match["entity"] or "attributes").lower())
        if entity is None:
            raise invalid(f"Invalid entity type {match['entity']!r} in the filter; use "
                          "metrics, params, tags or attributes")  # fmt: skip
        key = match["key"].strip('`"')
        value = match["value"]
        if value[0] in "'\"":
            value = value[1:-1].replace("\\" + value[0], value[0])
        clauses.append((entity, key, " ".join(match["op"].upper().split()), value))
        position = match.end()
        joined = _AND.match(text, position)
        if joined is None and position < len(text):
            raise invalid(f"Invalid filter at {text[position:position + 40]!r}: join clauses "
                          "with AND")  # fmt: skip
        position = joined.end() if joined else position
    return clauses


def apply(runs: QuerySet[Any], text: str, fields: Fields = RUNS) -> QuerySet[Any]:
    for index, (entity, key, op, raw) in enumerate(parse(text)):
        alias = f"_f{index}"
        if entity == "metrics" and not fields.metrics:
            raise invalid("Metrics cannot be searched here; use attributes or tags")
        if entity == "metrics":
            if op not in COMPARATORS:
                raise invalid(f"Metric comparator {op!r} is not one of =, !=, <, <=, >, >=")
            try:
                number = float(raw)
            except ValueError as exc:
                raise invalid(f"Metric {key!r} compares to a number, not {raw!r}") from exc
            latest = KeyTransform("value", KeyTransform(key, "latest_metrics"))
            runs = runs.annotate(**{alias: Cast(latest, FloatField())})
            runs = runs.filter(_compare(alias, op, number))
        elif entity in ("params", "tags"):
            # As text, compared as text (not as JSON, which 'blue' is not).
            runs = runs.annotate(**{alias: Cast(KeyTextTransform(key, entity), TextField())})
            condition = _compare_text(alias, op, raw)
            if entity == "tags" and op == "!=" and fields.untagged_differs:
                condition |= Q(**{f"{alias}__isnull": True})
            runs = runs.filter(condition)
        else:
            column = fields.attributes.get(key)
            if column is None:
                raise invalid(f"Invalid attribute key {key!r}; use one of "
                              + ", ".join(fields.attributes))  # fmt: skip
            if key in fields.numeric:
                try:
                    runs = runs.filter(_compare(column, op, int(float(raw))))
                except ValueError as exc:
                    raise invalid(f"Attribute {key!r} compares to a number") from exc
            else:
                runs = runs.annotate(**{alias: F(column)}).filter(_compare_text(alias, op, raw))
    return runs


def _compare(field: str, op: str, value: float | int) -> Q:
    if op not in COMPARATORS:
        raise invalid(f"Comparator {op!r} does not apply to numbers")
    condition = Q(**{f"{field}__{COMPARATORS[op]}": value})
    return ~condition if op == "!=" else condition


def _compare_text(field: str, op: str, value: str) -> Q:
    if op in ("=", "!="):
        condition = Q(**{field: value})
        return ~condition & Q(**{f"{field}__isnull": False}) if op == "!=" else condition
    if op.endswith("LIKE"):
        lookup = "iregex" if "ILIKE" in op else "regex"
        condition = Q(**{f"{field}__{lookup}": _like(value)})
        return ~condition & Q(**{f"{field}__isnull": False}) if op.startswith("NOT") else condition
    raise invalid(f"Comparator {op!r} does not apply to text; use =, !=, LIKE or ILIKE")


def ordering(given: Any, columns: dict[str, str]) -> list[str]:
    """MLflow's order_by (["name ASC", "creation_time DESC"]) as Django's ordering."""
    clauses = [given] if isinstance(given, str) else list(given or [])
    found = []
    for clause in clauses:
        name, _, direction = str(clause).strip().partition(" ")
        column = columns.get(name.removeprefix("attributes.").strip("`"))
        if column is None:
            raise invalid(f"Invalid order_by clause {clause!r}; order by one of "
                          + ", ".join(columns))  # fmt: skip
        if direction.strip().upper() not in ("", "ASC", "DESC"):
            raise invalid(f"Invalid order_by clause {clause!r}: end it with ASC or DESC")
        found.append(("-" if direction.strip().upper() == "DESC" else "") + column)
    return found
