"""Typed answers: the spellings of ``json_keys`` that carry types, and typed columns out.

A researcher who asks for ``prob`` wants a number to average, not text that sometimes reads
"high". So ``json_keys`` may say what each key holds, in the spelling at hand: ``{"label": str,
"prob": float}`` in Python, ``label:str,prob:float`` on the command line, a pydantic model class or a
JSON Schema. Each becomes one JSON Schema with types, sent to the server (constrained decoding where
the server has it) and checked on every answer, and the key's column gets the matching dtype.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import UsageError

#: What ``json_keys`` may be: names (``["label", "prob"]``, ``"label,prob"``), names with types
#: (``{"label": str, "prob": float}``, ``"label:str,prob:float"``), a pydantic class, a JSON Schema.
JsonKeys = Union[Sequence[str], str, Mapping[str, Any], type, None]

#: Type names a key may be given, on the command line or as strings, and their JSON Schema names.
TYPE_NAMES: dict[str, str] = {
    "str": "string", "string": "string", "text": "string",
    "int": "integer", "integer": "integer",
    "float": "number", "number": "number",
    "bool": "boolean", "boolean": "boolean",
}
_PYTHON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}

#: The pandas dtype of a column holding one JSON type; nullable, since a failed row has no value.
COLUMN_DTYPES: dict[str, str] = {"integer": "Int64", "number": "float64", "boolean": "boolean",
                                 "string": "str"}


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """What a structured ask expects: its keys, the JSON Schema sent, and each key's JSON type."""

    keys: tuple[str, ...]
    schema: dict[str, Any]
    model_class: Any = None
    types: dict[str, str] = field(default_factory=dict)


def is_model_class(value: Any) -> bool:
    """A pydantic model class, recognised without importing pydantic (it stays optional)."""
    return isinstance(value, type) and hasattr(value, "model_json_schema")


def is_json_schema(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("properties"), Mapping)


def is_typed(json_keys: Any) -> bool:
    """Does this ``json_keys`` carry types (rather than only naming keys)?"""
    if json_keys is None:
        return False
    if is_model_class(json_keys) or isinstance(json_keys, Mapping):
        return True
    items = json_keys.split(",") if isinstance(json_keys, str) else json_keys
    return any(isinstance(item, str) and ":" in item for item in items)


def type_name(value: Any, key: str, what: str = "json_keys") -> dict[str, Any]:
    """The JSON Schema of one key from ``str``, ``"float"``, or a schema fragment."""
    if isinstance(value, type) and value in _PYTHON_TYPES:
        return {"type": _PYTHON_TYPES[value]}
    if isinstance(value, str) and value.strip().lower() in TYPE_NAMES:
        return {"type": TYPE_NAMES[value.strip().lower()]}
    if isinstance(value, Mapping):
        return dict(value)
    known = "str, int, float, bool"
    raise UsageError(f"{what}: the type of {key!r} is {getattr(value, '__name__', value)!r}; "
                     f"use one of {known} (or a JSON Schema)")


def typed_schema(json_keys: Any, what: str = "json_keys") -> tuple[dict[str, Any], Any]:
    """(JSON Schema, pydantic class or None) from any typed spelling of ``json_keys``."""
    if is_model_class(json_keys):
        return json_keys.model_json_schema(), json_keys
    if is_json_schema(json_keys):
        return dict(json_keys), None
    if isinstance(json_keys, Mapping):
        pairs = list(json_keys.items())
    else:
        items = json_keys.split(",") if isinstance(json_keys, str) else list(json_keys)
        pairs = []
        for item in items:
            name, _, kind = str(item).partition(":")
            if name.strip():
                pairs.append((name.strip(), kind.strip() or None))
    properties = {str(name): ({} if kind is None else type_name(kind, str(name), what))
                  for name, kind in pairs}
    return {"type": "object", "properties": properties, "required": list(properties)}, None


def json_types(schema: Mapping[str, Any]) -> dict[str, str]:
    """Each top-level key's one JSON type (nulls allowed aside), where the schema gives one."""
    out: dict[str, str] = {}
    for key, spec in (schema.get("properties") or {}).items():
        kind = _single_type(spec)
        if kind in COLUMN_DTYPES:
            out[key] = kind
    return out


def _single_type(spec: Any) -> str | None:
    if not isinstance(spec, Mapping):
        return None
    kind = spec.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        named = [k for k in kind if k != "null"]
        return named[0] if len(named) == 1 else None
    options = spec.get("anyOf") or spec.get("oneOf")
    if isinstance(options, list):
        named_types = {_single_type(o) for o in options} - {"null"}
        return named_types.pop() if len(named_types) == 1 else None
    return None


def nullable(spec: dict[str, Any]) -> dict[str, Any]:
    """The key's schema also allowing null: a fill asks for fields the text may not give."""
    kind = spec.get("type")
    if isinstance(kind, str) and kind != "null":
        return {**spec, "type": [kind, "null"]}
    if kind is None and not spec:
        return {"type": ["string", "null"]}
    return spec


def wrong_type(key: str, expected: Sequence[str], value: Any) -> str:
    """The reason a row fails: ``prob: expected number, got "high"``."""
    return f"{key}: expected {' or '.join(expected)}, got {_shown(value)}"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def pydantic_reason(exc: Exception) -> str:
    """A pydantic ValidationError as the same one-line reason: ``prob: <message>, got "high"``."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
            return f"{where}: {first.get('msg', 'invalid')}, got {_shown(first.get('input'))}"
        except Exception:  # an unexpected shape: fall back to the text
            pass
    return "answer does not fit the schema: " + " ".join(str(exc).splitlines()[:3])[:300]


def typed_column(values: list[Any], kind: str | None) -> Any:
    """The key's values as a column of its type's dtype (the values as given when they do not fit)."""
    import pandas as pd

    dtype = COLUMN_DTYPES.get(kind or "")
    if dtype is None:
        return values
    try:
        return pd.Series(values, dtype=dtype).array
    except (TypeError, ValueError):
        return values
