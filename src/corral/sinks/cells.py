"""How a table's cell values are written: nested values as JSON text, Arrow types that stay stable.

Shared by the table writers (:mod:`corral.sinks.tables`): CSV, TSV and Excel get lists and dicts as
JSON (not Python reprs), JSONL gets what orjson cannot serialise by itself, and Parquet gets column
types that later chunks can be cast to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

__all__ = ["JSON_OPTIONS", "arrow_column", "is_missing", "json_default", "nested_to_json"]

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def nested_to_json(df: pd.DataFrame) -> pd.DataFrame:
    """Lists and dicts (e.g. from JSONL) as JSON text, not Python reprs, for text outputs."""
    out = df
    for i in range(df.shape[1]):
        column = df.iloc[:, i]
        if column.dtype == object and column.map(_is_nested).any():
            if out is df:
                out = df.copy()
            out.isetitem(i, column.map(lambda v: _json_text(v) if _is_nested(v) else v))
    return out


def _is_nested(value: Any) -> bool:
    return isinstance(value, (list, dict, tuple, np.ndarray))


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=JSON_OPTIONS, default=json_default).decode()



def json_default(value: Any) -> Any:
    """What orjson cannot serialise by itself: pandas' missing markers, timestamps, numpy values."""
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def arrow_column(values: pd.Series) -> pa.Array:
    """An Arrow array for a pandas column, with a type that later chunks can be cast to.

    All-null columns become string (not the ``null`` type, which would fix the file's schema to
    nothing useful), large_string becomes string, and object columns that Arrow cannot type
    (mixed values) become text, with lists and dicts as JSON.
    """
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        text = values.map(lambda v: v if v is None or isinstance(v, str) or is_missing(v)
                          else _json_text(v) if _is_nested(v) else str(v))
        array = pa.array(text, type=pa.string(), from_pandas=True)
    if pa.types.is_null(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    return array


def is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False

