"""Structured answers: JSON Schemas from keys or pydantic classes, and robust parsing of replies.

Why both a schema and a parser: servers that support it (Ollama ``format``, OpenAI
``response_format``) decode under the schema, so the answer is valid by construction; servers or
models that ignore it still often wrap the JSON in prose or code fences, which the parser tolerates.
An answer that still fails is re-asked, then kept with a reason: never a silent NaN.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any

from ..checks import parse_json_response
from ..errors import UsageError
from .answer_types import is_model_class, is_typed, pydantic_reason, typed_schema, wrong_type

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


def check_keys(keys: tuple[str, ...] | list[str], what: str = "json_keys") -> tuple[str, ...]:
    """Keys become column names and template fields: they must be plain identifiers."""
    out = tuple(keys)
    if not out:
        raise UsageError(f"{what} is empty")
    for key in out:
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise UsageError(f"{what}: {key!r} is not a valid name (letters, digits and _, "
                             "not starting with a digit)")
    if len(set(out)) != len(out):
        raise UsageError(f"{what}: a key is listed twice")
    return out


def schema_for_keys(keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON Schema asking for exactly these keys, each any JSON value (types unknown)."""
    return {
        "type": "object",
        "properties": {key: {} for key in keys},
        "required": list(keys),
    }


def resolve_schema(json_keys: Any, json_schema: Any) -> tuple[
        tuple[str, ...] | None, dict[str, Any] | None, Any]:
    """(keys, JSON Schema, pydantic class or None) from the user's json_keys / json_schema.

    ``json_keys`` may carry the types itself (``{"label": str, "prob": float}``, ``"label:str,prob:float"``,
    a pydantic class or a JSON Schema): it is then the schema."""
    if is_typed(json_keys):
        if json_schema is not None:
            raise UsageError("json_keys already gives the types: leave json_schema out")
        json_schema, _ = typed_schema(json_keys)
        if is_model_class(json_keys):
            json_schema = json_keys
        json_keys = None
    model_class = None
    if json_schema is not None:
        if is_model_class(json_schema):
            model_class = json_schema
            schema = json_schema.model_json_schema()
        elif isinstance(json_schema, dict):
            schema = json_schema
        else:
            raise UsageError("json_schema must be a JSON Schema dict or a pydantic model class")
        props = schema.get("properties")
        if schema.get("type") not in (None, "object") or not isinstance(props, dict) or not props:
            raise UsageError("json_schema must describe an object with properties")
        keys = check_keys(tuple(props), "json_schema properties")
        if json_keys is not None and tuple(json_keys) != keys:
            missing = set(json_keys) - set(keys)
            if missing:
                raise UsageError(f"json_keys {sorted(missing)} are not properties of json_schema")
            keys = check_keys(tuple(json_keys))
        return keys, schema, model_class
    if json_keys is None:
        return None, None, None
    if isinstance(json_keys, str):  # "label,prob"
        json_keys = tuple(k.strip() for k in json_keys.split(",") if k.strip())
    keys = check_keys(tuple(json_keys))
    return keys, schema_for_keys(keys), None


@dataclass(slots=True)
class AnswerCheck:
    """Parses and validates one reply against the expected keys / schema."""

    keys: tuple[str, ...]
    schema: dict[str, Any] | None = None
    model_class: Any = None

    def parse(self, text: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """(values by key, None) or (None, reason)."""
        try:
            data = parse_json_response(text)
        except ValueError as exc:
            return None, f"answer is not JSON ({exc})"
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]
        if not isinstance(data, dict):
            return None, f"answer is JSON but not an object ({type(data).__name__})"
        missing = [k for k in self.keys if k not in data]
        if missing:
            return None, f"answer lacks key(s) {', '.join(missing)}"
        if self.model_class is not None:
            try:
                validated = self.model_class.model_validate(data)
            except Exception as exc:  # pydantic.ValidationError; keep pydantic optional
                return None, pydantic_reason(exc)
            data = validated.model_dump(mode="json")
        elif self.schema is not None:
            problem = _check_types(data, self.schema)
            if problem:
                return None, problem
        return {k: data.get(k) for k in self.keys}, None

    def problem(self, text: str | None) -> str | None:
        return self.parse(text)[1]


def _check_types(data: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """The checks that matter for table columns: declared types and enums of top-level keys."""
    for key, spec in (schema.get("properties") or {}).items():
        if key not in data or not isinstance(spec, dict):
            continue
        value = data[key]
        expected = spec.get("type")
        if expected:
            names = expected if isinstance(expected, list) else [expected]
            if not any(_is_json_type(value, name) for name in names):
                return wrong_type(key, names, value)
        if "enum" in spec and value not in spec["enum"]:
            return f"{key}: expected one of {', '.join(map(str, spec['enum']))}, got {value!r}"
    return None


def _is_json_type(value: Any, name: str) -> bool:
    """JSON Schema's types: a bool is no number, and 3.0 is an integer."""
    if isinstance(value, bool):
        return name == "boolean"
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(name, (object,)))
