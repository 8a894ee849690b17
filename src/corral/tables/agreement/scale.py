"""A key's answers as points on one scale, and the level of measurement that scale has.

Models write the same answer differently, so labels are normalised before comparison
(``normalize=True``): whitespace is stripped, text is case-folded (``" Positive"`` and
``"positive"`` agree), ``true``/``True``/``"TRUE"`` are one label, ``1`` and ``1.0`` are one label,
and an empty string counts as no answer. ``normalize=False`` compares raw values (``1 == 1.0``
still holds; booleans become the text ``True``/``False`` so ``True`` and ``1`` stay apart).

The level decides which answers count as close. With ``level=None`` it is read off the values,
the same way whatever file format carried them (a CSV gives text, Parquet gives numbers):

* an ordered categorical column is **ordinal**, its categories being the scale;
* numbers (or text that is all numbers, as a CSV gives back) are **ordinal** when they are whole
  and take at most `MAX_ORDINAL_LEVELS` values (a 1-5 rating), otherwise **interval** (``prob``);
* anything else (text, booleans, lists) is **nominal**.

**ratio** is never inferred: only the researcher knows that zero means "none".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...errors import UsageError
from .columns import is_missing

LEVELS = ("nominal", "ordinal", "interval", "ratio")
#: Whole numbers taking at most this many values are inferred to be an ordinal rating scale.
MAX_ORDINAL_LEVELS = 20
#: Whole-number scales are filled in from the smallest to the largest value when they span at most
#: this many points, so weights measure distance in the values even where no model used a value.
MAX_FILLED_SPAN = 100
_MISSING = object()


@dataclass
class Scale:
    """Every answer of one key as an index into ``points`` (-1 for no answer)."""

    level: str
    inferred: bool
    points: list[Any]       # the scale in order (nominal: labels sorted; numbers: ascending)
    values: np.ndarray      # float per point: the number for interval/ratio, else its position
    codes: np.ndarray       # (rows, models) int64
    numeric: bool           # the points are numbers (so a mean absolute error means something)

    def used(self) -> list[int]:
        """Indices of the points some model gave, ascending."""
        return sorted(set(self.codes[self.codes >= 0].tolist()))


def build_scale(block: pd.DataFrame, level: str | None, normalize: bool, key: str) -> Scale:
    """The key's columns (one per model) on one scale, at the given or inferred level."""
    if level is not None and level not in LEVELS:
        raise UsageError(f"level {level!r} for key {key!r} is not one of {', '.join(LEVELS)}")
    ordered = _ordered_categories(block)
    numbers = None if ordered is not None else _numbers(block)
    inferred = level is None
    if level is None:
        if ordered is not None:
            level = "ordinal"
        elif numbers is not None:
            finite = numbers[~np.isnan(numbers)]
            whole = bool(np.all(finite == np.round(finite)))
            level = "ordinal" if whole and len(np.unique(finite)) <= MAX_ORDINAL_LEVELS else "interval"
        else:
            level = "nominal"
    if level == "nominal":
        return _nominal(block, normalize, inferred)
    if ordered is not None:
        if level != "ordinal":
            raise UsageError(f"key {key!r} is an ordered categorical ({_sample(ordered)}): its level "
                             f"can be ordinal or nominal, not {level}")
        return _categorical(block, ordered, inferred)
    if numbers is None:
        raise UsageError(f"level {level!r} for key {key!r} needs numbers (or an ordered categorical), "
                         f"but its answers include text such as {_sample(_text_examples(block))}; "
                         f"use level='nominal' for labels")
    if level == "ratio" and np.nanmin(numbers, initial=0.0) < 0:
        raise UsageError(f"level 'ratio' for key {key!r} needs values ≥ 0 (a ratio scale has a true "
                         f"zero); found {np.nanmin(numbers):g}: use 'interval'")
    return _numeric(numbers, level, inferred)


# ---------------------------------------------------------------------------------- the three kinds


def _nominal(block: pd.DataFrame, normalize: bool, inferred: bool) -> Scale:
    labels = [[normalise(v, normalize) for v in block[c].tolist()] for c in block.columns]
    points = sorted({v for column in labels for v in column if v is not _MISSING}, key=label_sort_key)
    index = {p: i for i, p in enumerate(points)}
    codes = np.array([[-1 if v is _MISSING else index[v] for v in column] for column in labels],
                     dtype=np.int64).T.reshape(len(block), len(block.columns))
    return Scale("nominal", inferred, points, np.arange(len(points), dtype=float), codes, False)


def _categorical(block: pd.DataFrame, categories: list[Any], inferred: bool) -> Scale:
    index = {c: i for i, c in enumerate(categories)}
    codes = np.full((len(block), len(block.columns)), -1, dtype=np.int64)
    for j, column in enumerate(block.columns):
        for i, value in enumerate(block[column].tolist()):
            if not is_missing(value):
                if value not in index:
                    raise UsageError(f"{column}: {value!r} is not one of the categories "
                                     f"{_sample(categories)}")
                codes[i, j] = index[value]
    return Scale("ordinal", inferred, list(categories), np.arange(len(categories), dtype=float), codes,
                 False)


def _numeric(numbers: np.ndarray, level: str, inferred: bool) -> Scale:
    finite = numbers[~np.isnan(numbers)]
    seen = np.unique(finite)
    whole = bool(np.all(seen == np.round(seen)))
    if whole and len(seen) and seen[-1] - seen[0] + 1 <= MAX_FILLED_SPAN:
        points = np.arange(seen[0], seen[-1] + 1)
    else:
        points = seen
    codes = np.full(numbers.shape, -1, dtype=np.int64)
    present = ~np.isnan(numbers)
    codes[present] = np.searchsorted(points, numbers[present])
    shown = [int(p) if whole else float(p) for p in points]
    values = points.astype(float) if level in ("interval", "ratio") else np.arange(len(points), dtype=float)
    return Scale(level, inferred, shown, values, codes, True)


# ---------------------------------------------------------------------------------- reading values


def _ordered_categories(block: pd.DataFrame) -> list[Any] | None:
    """The categories of the key's ordered categorical columns (in order), if it has any."""
    found: list[Any] | None = None
    for column in block.columns:
        dtype = block[column].dtype
        if isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
            found = found or []
            found.extend(c for c in dtype.categories.tolist() if c not in found)
    return found


def _numbers(block: pd.DataFrame) -> np.ndarray | None:
    """The answers as floats (NaN = no answer) when every answer is a number, else None."""
    out = np.full((len(block), len(block.columns)), np.nan)
    any_number = False
    for j, column in enumerate(block.columns):
        series = block[column]
        if pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
            return None
        for i, value in enumerate(series.tolist()):
            if is_missing(value) or (isinstance(value, str) and not value.strip()):
                continue
            number = as_number(value)
            if number is None:
                return None
            out[i, j] = number
            any_number = True
    return out if any_number else None


def as_number(value: Any) -> float | None:
    """A finite real number from a number or from text that is one (``" 0.7"``); else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def normalise(value: Any, normalize: bool) -> Any:
    """One answer as a hashable label, or `_MISSING` (see the module docstring for the rules)."""
    if is_missing(value):
        return _MISSING
    if isinstance(value, (list, dict, tuple, np.ndarray)):
        value = json.dumps(value.tolist() if isinstance(value, np.ndarray) else value,
                           sort_keys=True, default=str)
    elif isinstance(value, np.generic):
        value = value.item()
    if not normalize:
        # Python would make True and 1 the same label; as text they stay apart.
        return str(value) if isinstance(value, bool) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value).strip().casefold()
    return text if text else _MISSING


def label_sort_key(label: Any) -> tuple[int, Any]:
    """Numbers in numeric order ("2" before "10"), then everything else as text."""
    try:
        return (0, float(label))
    except (TypeError, ValueError):
        return (1, str(label))


def gold_values(gold: pd.Series, scale: Scale, normalize: bool) -> list[Any]:
    """Reference labels on the key's scale: labels, category positions or numbers; None = no label."""
    out: list[Any] = []
    for value in gold.tolist():
        if scale.level == "nominal":
            label = normalise(value, normalize)
            out.append(None if label is _MISSING else label)
        elif not scale.numeric:
            out.append(None if is_missing(value) else value)
        else:
            out.append(as_number(value))
    return out


def _text_examples(block: pd.DataFrame) -> list[Any]:
    found: list[Any] = []
    for column in block.columns:
        for value in block[column].tolist():
            if not is_missing(value) and as_number(value) is None and value not in found:
                found.append(value)
                if len(found) == 3:
                    return found
    return found


def _sample(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
