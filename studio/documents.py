"""YAML and JSON documents users send (jobs, datastores, data assets, environments), read
within bounds and validated with pydantic, every problem named by its field path."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from studio.errors import FieldErrors

# libyaml's loader when PyYAML was built with it: several times faster than pure Python.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

M = TypeVar("M", bound=BaseModel)


class DocumentError(FieldErrors):
    """A document's problems, each with the field path it concerns."""


class Strict(BaseModel):
    """A document's fields: unknown ones are refused ("unknown field"), not ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def asset_version(value: str | int | None) -> str | None:
    """An asset's `version` (Azure takes 1 or "1"): its text, or ValueError."""
    if value is None:
        return None
    text = str(value)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", text) or text == "latest":
        raise ValueError("use letters, digits, '.', '-' and '_' (at most 64); not 'latest'")
    return text


# pydantic's labels for the members of a union, left out of the field paths shown.
_UNION_LABELS = {
    "data",
    "typed",
    "bad",
    "literal",
    "ok",
    "InlineEnvironment",
    "str",
    "int",
    "float",
    "bool",
    "none",
    "constrained-int",
    "json-or-python",
}


# Asset names (data, environments, models), Azure's rule.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$"
NAME_RULE = "use letters, digits, '-' and '_', starting with a letter or digit (at most 255)"


def _path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location -> a field path, without the union-member labels it adds."""
    parts: list[str] = []
    for item in loc:
        text = str(item)
        if text in _UNION_LABELS or text.startswith(("function-", "union[")) or "[" in text:
            continue
        parts.append(text)
    return ".".join(parts) or "(document)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return f"{error.get('input')!r} is not a name: " + NAME_RULE
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, message) pairs, one per problem."""
    errors: list[tuple[str, str]] = []
    for error in exc.errors():
        item = (_path(error["loc"]), _message(dict(error)))
        if item not in errors:
            errors.append(item)
    return _merge_type_errors(_prefer_specific(errors))


def validate(model: type[M], data: dict[str, Any]) -> M:
    """`data` as a `model`, or DocumentError naming every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(field_errors(exc)) from exc


def _prefer_specific(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A union that fails on every member reports each: keep the errors of the deepest paths."""
    paths = {p for p, _ in errors}
    return [
        (p, m)
        for p, m in errors
        if not any(other != p and other.startswith(p + ".") for other in paths)
    ]


def _merge_type_errors(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """'should be a valid string', '... valid integer' on one path -> one message."""
    merged: list[tuple[str, str]] = []
    kinds: dict[str, list[str]] = {}
    for path, message in errors:
        if message.startswith("Input should be a valid "):
            if path not in kinds:
                kinds[path] = []
                merged.append((path, ""))
            kinds[path].append(message.removeprefix("Input should be a valid ").split(" ")[0])
        else:
            merged.append((path, message))
    return [(p, m or "must be a " + " or ".join(dict.fromkeys(kinds[p]))) for p, m in merged]


# A document is a few hundred nodes; these bounds refuse the pathological ones (an alias
# "billion laughs" expands to millions of nodes from a few hundred bytes).
MAX_NODES = 100_000
MAX_DEPTH = 64


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have once every alias is expanded, counted over the
    composed graph (where an alias is a shared node), so the count itself stays cheap.
    Raises DocumentError past the bounds, or on an alias that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise DocumentError([("(document)", f"is nested deeper than {MAX_DEPTH} levels")])
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise DocumentError([("(document)", "has an alias that refers to itself")])
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        open_nodes.discard(id(node))
        if total > MAX_NODES:
            raise DocumentError(
                [("(document)", f"expands to more than {MAX_NODES:,} values (aliases included)")]
            )
        sizes[id(node)] = total
        return total

    return size(root, 0)


def load_yaml(text: str, what: str = "job") -> dict[str, Any]:
    """A YAML mapping, within the bounds; `what` names the document in messages."""
    data = load_bounded(text)
    if not isinstance(data, dict):
        raise DocumentError([("(document)", f"must be a YAML mapping of {what} fields")])
    return data


def load_bounded(text: str | bytes) -> Any:
    """Any YAML a user supplies (a document, an MLmodel, a pasted selector), within the
    bounds: an alias bomb of a few hundred bytes is refused before it is expanded."""
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError([("(document)", f"not valid YAML{where}: {problem}")]) from exc
    finally:
        loader.dispose()
    check_bounds(data)  # YAML's "\\0" and "\\ud800" escapes make what JSON's do
    return data


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text (a database refuses both), or None."""
    if "\x00" in value:
        return "must not contain a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text: it holds a lone surrogate (\\ud800-\\udfff)"
    return None


def check_bounds(data: Any) -> None:
    """The same bounds for a document that came as JSON, and text that can be stored: no
    NUL character, no lone surrogate (JSON's "\\ud800"), each refused by its field path."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(data, 0, ())]
    count = 0
    while stack:
        value, depth, path = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise DocumentError([("(document)", f"is nested deeper than {MAX_DEPTH} levels")])
        if count > MAX_NODES:
            raise DocumentError([("(document)", f"has more than {MAX_NODES:,} values")])
        if isinstance(value, dict):
            for key, item in value.items():
                key_path = (*path, str(key) if text_problem(str(key)) is None else "(a key)")
                stack.append((key, depth + 1, key_path))
                stack.append((item, depth + 1, key_path))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (*path, str(i))) for i, item in enumerate(value))
        elif isinstance(value, str) and (problem := text_problem(value)):
            raise DocumentError([(".".join(path) or "(document)", problem)])
