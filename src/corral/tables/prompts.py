"""Prompt templates over table rows: ``{text}`` and any ``{column}``; other braces stay literal.

Ollama-run-async's templates carry JSON examples such as ``Return JSON {"label": string} for: {text}``,
which ``str.format`` would choke on. Only ``{name}`` where name is ``text`` or a column is replaced;
``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import UsageError

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def is_missing(value: Any) -> bool:
    """Empty cells: None, NaN/NA, or a string that is only whitespace."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


class PromptTemplate:
    """A template checked against the table's columns before anything is sent."""

    def __init__(self, template: str, text_column: str, columns: list[str]) -> None:
        self.template = template
        self.text_column = text_column
        self.fields: list[str] = []
        known = set(columns)
        for match in _FIELD.finditer(template):
            name = match.group(1)
            if name is None:
                continue
            if name != "text" and name not in known:
                raise UsageError(f"the prompt template names {{{name}}}, which is not a column; "
                                 f"columns are: {', '.join(columns)}")
            self.fields.append(name)
        if not self.fields:
            raise UsageError("the prompt template uses no column: put {text} (or {column}) where the "
                             "row's text goes")

    def columns(self) -> list[str]:
        """The table columns the template reads (``{text}`` is the text column)."""
        return [self.text_column if name == "text" else name for name in self.fields]

    def render(self, row: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            name = match.group(1)
            value = row.get(self.text_column) if name == "text" else row.get(name)
            return "" if is_missing(value) else str(value)

        return _FIELD.sub(replace, self.template)


def default_template(keys: tuple[str, ...] | None) -> str:
    if keys:
        return ("Read the text below and answer with one JSON object with the keys "
                f"{', '.join(keys)}.\n\nText:\n{{text}}")
    return "{text}"
