"""Which columns of a fan-out frame hold which model's answer to which key.

Model names may contain ``.``, ``:``, ``/`` and ``-`` (and ``_``), so columns are never split on a
separator: a column belongs to ``key`` when it is exactly ``f"{key}_{model}"`` for a known model.
Models are known from ``models=`` or, failing that, from the ``response_*`` / ``error_*`` columns a
fan-out run always writes; only when neither exists are they guessed from the column names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import UsageError

#: Columns a fan-out run writes per model that are never answers to compare.
META_PREFIXES = ("response", "error")


def is_missing(value: Any) -> bool:
    """No answer: None, NaN, NA, NaT (an empty string is decided by the label rules)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return False


def short_list(items: Any, limit: int = 12) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" ... ({len(items)} in all)" if len(items) > limit else "") if items else "none"


def per_key_map(df: pd.DataFrame, value: str | Mapping[str, str] | None, what: str,
                check_column: bool) -> dict[str, str]:
    """``{key: value}``; ``"*"`` stands for "every key" when a single value was given."""
    if value is None:
        return {}
    mapping = {"*": value} if isinstance(value, str) else dict(value)
    if check_column:
        for column in mapping.values():
            if column not in df.columns:
                raise UsageError(f"{what} column {column!r} is not in the data "
                                 f"(columns: {short_list(map(str, df.columns))})")
    return mapping


def known_models(df: pd.DataFrame) -> list[str]:
    """Models named by the ``response_*`` / ``error_*`` columns a fan-out run writes, in order."""
    found: list[str] = []
    for column in map(str, df.columns):
        for prefix in META_PREFIXES:
            if column.startswith(prefix + "_") and len(column) > len(prefix) + 1:
                model = column[len(prefix) + 1:]
                if model not in found:
                    found.append(model)
    return found


def key_models(df: pd.DataFrame, key: str, models: list[str] | None, exclude: set[str]) -> list[str]:
    """The models with a ``{key}_{model}`` column, in the requested or column order (≥ 2 needed)."""
    columns = [str(c) for c in df.columns if str(c) not in exclude]
    prefix = f"{key}_"
    candidates = [c[len(prefix):] for c in columns if c.startswith(prefix) and len(c) > len(prefix)]
    if models is not None:
        missing = [m for m in models if f"{key}_{m}" not in columns]
        if missing:
            raise UsageError(f"no column {', '.join(repr(f'{key}_{m}') for m in missing)} for key "
                             f"{key!r}; columns for it: {short_list(prefix + c for c in candidates)}")
        found = list(models)
    else:
        known = known_models(df)
        if known:
            found = [m for m in candidates if m in known]
        else:
            # No fan-out markers: a column "label_conf_a" next to "label_a" belongs to key
            # "label_conf", not to a model "conf_a" of key "label".
            found = [m for m in candidates
                     if not any(m != o and m.endswith("_" + o) for o in candidates)]
    if not found:
        raise UsageError(f"no columns for key {key!r} (expected {key}_<model>); keys found: "
                         f"{short_list(available_keys(df, exclude))}")
    if len(found) < 2:
        shown = short_list(prefix + m for m in found) if found else "none"
        raise UsageError(f"agreement needs at least 2 models' columns for key {key!r} "
                         f"(columns named {key}_<model>); found: {shown}")
    return found


def available_keys(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Every ``{key}`` with a ``{key}_{model}`` column for a known model (for error messages)."""
    found: list[str] = []
    for model in known_models(df):
        for column in map(str, df.columns):
            key = column[: -len(model) - 1]
            if (column not in exclude and column.endswith(f"_{model}") and key
                    and key not in META_PREFIXES and key not in found):
                found.append(key)
    return found


def resolve_keys(df: pd.DataFrame, key: str | Sequence[str] | None, models: list[str] | None,
                 exclude: set[str]) -> list[str]:
    """The keys to analyse: the ones named, or every fan-out key some model answered.

    Every level of measurement is analysed (a ``prob`` key as interval, a ``label`` key as
    nominal), so no key is skipped for being numeric; only keys nobody answered are left out.
    """
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        if not keys:
            raise UsageError("no key given")
        return list(dict.fromkeys(keys))
    model_names = models if models is not None else known_models(df)
    if not model_names:
        raise UsageError("cannot tell which columns are model answers (no response_<model> or "
                         "error_<model> columns): name the key or the models")
    per_key: dict[str, list[str]] = {}
    for column in map(str, df.columns):
        if column in exclude:
            continue
        for model in model_names:
            suffix = f"_{model}"
            if column.endswith(suffix) and len(column) > len(suffix):
                per_key.setdefault(column[: -len(suffix)], []).append(column)
    if models is not None:
        absent = [m for m in models if not any(c.endswith(f"_{m}") for cs in per_key.values()
                                                for c in cs)]
        if absent:
            raise UsageError(f"no columns for model(s) {', '.join(absent)} (expected "
                             f"<key>_<model>, e.g. label_{absent[0]})")
    per_key = {k: cols for k, cols in per_key.items() if k not in META_PREFIXES}
    keys = [k for k, cols in per_key.items() if len(cols) >= 2 and _has_answers(df[cols])]
    if not keys and per_key and all(len(cols) < 2 for cols in per_key.values()):
        raise UsageError("agreement needs at least 2 models' columns for a key ({key}_<model>); "
                         f"found only: {short_list(c for cs in per_key.values() for c in cs)}")
    if not keys:
        raise UsageError(f"no answer columns ({{key}}_<model>) with any answer found for models "
                         f"{short_list(model_names)}: name the key to analyse")
    return keys


def _has_answers(block: pd.DataFrame) -> bool:
    return any(not is_missing(v) for name in block.columns for v in block[name].tolist())
