"""Streamed reading of tables (CSV, TSV, Parquet, JSONL, Excel) as pandas chunks.

Inputs can have a million rows and the whole job must stay under a few hundred MB, so nothing here
holds a file in memory: readers yield ``chunk_size``-row DataFrames (Excel, which openpyxl cannot
stream, is the one exception: see :mod:`corral.sources.excel`). Writing is
:mod:`corral.sinks.tables`.

Conventions, chosen so that text survives any round trip unchanged:

* CSV/TSV cells are read as text (``"00123"`` keeps its zeros). An empty cell is *missing* (NaN),
  so "fill missing fields" sees it as missing, and a missing value is written back as an empty cell.
  Only the empty cell is missing: the literal texts ``NA``, ``null``, ``N/A``, ``nan`` stay text.
* Files are UTF-8; a leading byte-order mark is accepted and dropped.
* Every chunk has a ``RangeIndex`` counting rows from the start of the file (0-based, no header).
* Malformed input raises :class:`~corral.errors.InputError` naming the file and, where it can be
  found, the line as an editor numbers it (embedded newlines counted). Anything else the user must
  fix (an unknown extension, a missing optional package) raises :class:`~corral.errors.UsageError`.
"""

from __future__ import annotations

import codecs
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, UsageError
from ..limits import CHUNK_ROWS
from .delimited import SEPARATORS, check_encoding, csv_chunks
from .excel import excel_chunks, excel_row_count
from .jsonl import wide_encoding
from .table_checks import TEXT_DTYPE, require_columns, utf8_error

__all__ = [
    "FORMATS", "batch_frame", "check_input", "count_rows", "detect_format", "open_parquet",
    "read_table", "read_table_chunks", "resolve_format", "to_pandas",
]

PathLike = str | os.PathLike[str]

#: File extension -> format name.
FORMATS: dict[str, str] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "excel", ".xls": "excel",
}


# --------------------------------------------------------------------------------------------------
# Formats and input checks
# --------------------------------------------------------------------------------------------------

def detect_format(path: PathLike) -> str:
    """The format named by ``path``'s extension: csv, tsv, parquet, jsonl or excel."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise UsageError(f"{path}: unknown table format {suffix or '(no extension)'!r}; "
                         f"use one of {known}") from None


def resolve_format(path: PathLike, fmt: str | None) -> str:
    """``fmt`` if given (validated), else the format from the extension."""
    if fmt is None:
        return detect_format(path)
    if fmt not in set(FORMATS.values()):
        raise UsageError(f"unknown table format {fmt!r}; use one of "
                         f"{', '.join(sorted(set(FORMATS.values())))}")
    return fmt


def check_input(path: PathLike) -> Path:
    """Fail early, naming the file, if it cannot be a table at all."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), None, "no such file")
    if p.is_dir():
        raise InputError(str(path), None, "is a directory, not a file")
    if p.stat().st_size == 0:
        raise InputError(str(path), None, "empty file")
    return p


def read_table_chunks(path: PathLike, chunk_size: int = CHUNK_ROWS, columns: Sequence[str] | None = None,
                      fmt: str | None = None, encoding: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the table at ``path`` as DataFrames of at most ``chunk_size`` rows.

    The first chunk is read before this returns, so a missing file, a bad header, an unknown column
    or an error in the first rows raises here, before the caller starts any work. At least one chunk
    is always yielded (empty, with the columns, for a header-only file). ``columns`` selects and
    orders columns; one the file lacks is an InputError listing the columns it has. ``encoding``
    (CSV and TSV only) reads a file that is not UTF-8: cp1252, latin-1, utf-16...
    """
    fmt = resolve_format(path, fmt)
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be at least 1, not {chunk_size}")
    check_encoding_for(fmt, encoding)
    p = check_input(path)
    wanted = list(columns) if columns is not None else None
    if fmt in SEPARATORS:
        chunks = csv_chunks(p, chunk_size, wanted, SEPARATORS[fmt], encoding)
    else:
        chunks = _READERS[fmt](p, chunk_size, wanted)
    first = next(chunks)
    return _number_rows(itertools.chain([first], chunks))


def check_encoding_for(fmt: str, encoding: str | None) -> None:
    """An encoding is a property of text tables: refused for Parquet, JSONL (UTF-8 by definition)
    and Excel, rather than silently ignored."""
    check_encoding(encoding)
    if encoding is not None and fmt not in SEPARATORS:
        raise UsageError(f"--encoding (encoding=) is for CSV and TSV input, not {fmt}")


def read_table(path: PathLike, fmt: str | None = None, encoding: str | None = None) -> pd.DataFrame:
    """The whole table in one DataFrame, for inputs known to be small (same rules as the chunks)."""
    frames = list(read_table_chunks(path, chunk_size=100_000, fmt=fmt, encoding=encoding))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def _number_rows(chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Give every chunk a RangeIndex of row positions in the file, whatever the reader produced."""
    start = 0
    for chunk in chunks:
        chunk.index = pd.RangeIndex(start, start + len(chunk))
        start += len(chunk)
        yield chunk



# ---- Parquet -------------------------------------------------------------------------------------

def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file; anything unreadable is an InputError."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        if "magic bytes" in str(exc):
            raise InputError(str(path), None, "not a Parquet file") from None
        raise InputError(str(path), None, f"unreadable Parquet file: {exc}") from None


def _parquet_chunks(path: Path, chunk_size: int, columns: list[str] | None
                    ) -> Iterator[pd.DataFrame]:
    """Stream record batches; memory holds one batch (batches never span row groups, so some chunks
    may be shorter than ``chunk_size``)."""
    parquet = open_parquet(path)
    require_columns(path, parquet.schema_arrow.names, columns)
    produced = False
    try:
        for batch in parquet.iter_batches(batch_size=chunk_size, columns=columns):
            produced = True
            yield batch_frame(batch, columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(str(path), None, f"corrupt Parquet data: {exc}") from None
    if not produced:
        empty = parquet.schema_arrow.empty_table()
        yield batch_frame(empty.select(columns) if columns else empty, columns)


def batch_frame(batch: pa.RecordBatch | pa.Table, columns: list[str] | None) -> pd.DataFrame:
    """pandas from Arrow; a pandas index stored in the file comes back as a column if it was named
    (it is data, e.g. ``id``) and is dropped if it was the anonymous 0..n index."""
    frame = batch.to_pandas()
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=all(name is None for name in frame.index.names))
    return frame[columns] if columns else frame


# ---- JSONL ---------------------------------------------------------------------------------------

def _jsonl_chunks(path: Path, chunk_size: int, columns: list[str] | None
                  ) -> Iterator[pd.DataFrame]:
    """Parse JSON Lines with orjson, one object per line.

    Parsed here rather than with ``pandas.read_json``: errors get their exact line, no column is
    silently turned into dates, and ints stay ints (nullable ``Int64`` when some are null).
    """
    rows: list[dict[str, Any]] = []
    produced = False
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, 1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            rows.append(_json_object(path, line, raw))
            if len(rows) >= chunk_size:
                yield _records_frame(path, rows, columns, first=not produced)
                produced, rows = True, []
    if rows or not produced:
        yield _records_frame(path, rows, columns, first=not produced)


def _json_object(path: Path, line: int, raw: bytes) -> dict[str, Any]:
    """One JSONL line as a dict, or an InputError naming the line."""
    if b"\x00" in raw:
        wide = wide_encoding(raw) if line == 1 else None
        if wide:
            raise InputError(str(path), None, f"file is {wide}, not UTF-8: save it as UTF-8")
        raise InputError(str(path), line, "NUL byte in a text file (binary, or UTF-16 text?)")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise utf8_error(path) from None
        raise InputError(str(path), line, f"bad JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(str(path), line, f"expected a JSON object, found {type(value).__name__}")
    return value


def _records_frame(path: Path, rows: list[dict[str, Any]], columns: list[str] | None,
                   first: bool) -> pd.DataFrame:
    """A DataFrame from parsed objects, with each column given the narrowest faithful dtype."""
    frame = pd.DataFrame(rows, dtype=object)
    if first:
        require_columns(path, list(frame.columns), columns)
    if columns:
        frame = frame.reindex(columns=columns)
    for i in range(frame.shape[1]):
        frame.isetitem(i, _typed_column(frame.iloc[:, i]))
    return frame


def _typed_column(values: pd.Series) -> pd.Series:
    """Text -> text dtype, ints -> int64/Int64, floats -> float64, bools -> bool/boolean, else the
    Python objects as parsed (mixed types, nested lists and objects)."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    missing = bool(values.isna().any())
    target: Any = {
        "string": TEXT_DTYPE,
        "integer": "Int64" if missing else "int64",
        "floating": "float64", "mixed-integer-float": "float64",
        "boolean": "boolean" if missing else "bool",
    }.get(kind)
    if target is None:
        return values
    try:
        return values.astype(target)
    except (OverflowError, TypeError, ValueError):  # e.g. an integer beyond 64 bits
        return values



_READERS = {
    "csv": lambda p, n, c: csv_chunks(p, n, c, ","),
    "tsv": lambda p, n, c: csv_chunks(p, n, c, "\t"),
    "parquet": _parquet_chunks,
    "jsonl": _jsonl_chunks,
    "excel": excel_chunks,
}


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------

def count_rows(path: PathLike, fmt: str | None = None, encoding: str | None = None) -> int | None:
    """Number of data rows, cheaply, for progress bars and estimates; None when unknown.

    * Parquet: exact, from the footer metadata.
    * CSV/TSV: a vectorised scan counting non-blank records outside double quotes (so newlines
      inside quoted cells are not rows), minus the header. Exact for RFC 4180 files; None when the
      quotes do not balance, where only a full parse could tell.
    * JSONL: non-blank lines.
    * Excel: the sheet's recorded dimension, or None if the file does not record it.
    * A wide encoding (UTF-16, UTF-32): None; its bytes are not lines.
    """
    fmt = resolve_format(path, fmt)
    p = check_input(path)
    if encoding is not None and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        return None
    if fmt == "parquet":
        return open_parquet(p).metadata.num_rows
    if fmt == "excel":
        return excel_row_count(p)
    records = _count_records(p, quoted=fmt in SEPARATORS)
    if records is None:
        return None
    return max(records - 1, 0) if fmt in SEPARATORS else records


def _count_records(path: Path, quoted: bool, block_size: int = 1 << 20) -> int | None:
    """Count lines holding something other than line breaks, ignoring newlines inside quotes.

    A newline is inside a quoted cell iff an odd number of ``"`` precede it (escaped quotes come in
    pairs); parity is a running XOR, done per 1 MiB block with numpy so memory stays small.
    """
    records, parity, content_total, content_at_last_end = 0, 0, 0, 0
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            data = np.frombuffer(block, dtype=np.uint8)
            ends = data == 10
            if quoted:
                quotes = np.bitwise_xor.accumulate((data == 34).astype(np.uint8)) ^ parity
                ends &= quotes == 0
                parity = int(quotes[-1])
            content = np.cumsum((data != 10) & (data != 13), dtype=np.int64) + content_total
            at_ends = content[ends]
            if at_ends.size:
                steps = np.diff(at_ends, prepend=content_at_last_end)
                records += int(np.count_nonzero(steps))
                content_at_last_end = int(at_ends[-1])
            content_total = int(content[-1])
    if quoted and parity:
        return None
    return records + (content_total > content_at_last_end)



# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------

def to_pandas(df_like: Any) -> pd.DataFrame:
    """A pandas DataFrame from pandas (returned as is), polars (eager or lazy) or Arrow tables.

    polars is never imported here: it is recognised by its module, so it stays optional.
    """
    if isinstance(df_like, pd.DataFrame):
        return df_like
    module = type(df_like).__module__ or ""
    if module.startswith("polars"):
        if hasattr(df_like, "collect") and not hasattr(df_like, "to_pandas"):
            df_like = df_like.collect()  # LazyFrame
        return df_like.to_pandas()
    if isinstance(df_like, (pa.Table, pa.RecordBatch)):
        return df_like.to_pandas()
    raise UsageError(f"expected a pandas or polars DataFrame, got {type(df_like).__name__}")

