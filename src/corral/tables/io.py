"""Streamed reading and writing of tables (CSV, TSV, Parquet, JSONL, Excel) as pandas chunks.

Inputs can have a million rows and the whole job must stay under a few hundred MB, so nothing here
holds a file in memory: readers yield ``chunk_size``-row DataFrames and :class:`TableWriter` appends
them one at a time. The one exception is Excel, which openpyxl cannot stream: it is read whole and
then cut into chunks (spreadsheets top out at about a million rows anyway).

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

import csv
import importlib
import itertools
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, UsageError
from ..locks import FileLock

__all__ = [
    "FORMATS", "TableWriter", "count_rows", "detect_format", "neutralize_formulas", "read_table",
    "read_table_chunks", "to_pandas",
]

PathLike = str | os.PathLike[str]

#: File extension -> format name.
FORMATS: dict[str, str] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "excel", ".xls": "excel",
}
_SEPARATORS = {"csv": ",", "tsv": "\t"}
EXCEL_MAX_ROWS = 1_048_576  # including the header row
# pandas >= 3 has a real text dtype ("str", NaN for missing); pandas 2's "str" would turn NaN into "nan".
_TEXT_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


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


def _resolve_format(path: PathLike, fmt: str | None) -> str:
    """``fmt`` if given (validated), else the format from the extension."""
    if fmt is None:
        return detect_format(path)
    if fmt not in set(FORMATS.values()):
        raise UsageError(f"unknown table format {fmt!r}; use one of "
                         f"{', '.join(sorted(set(FORMATS.values())))}")
    return fmt


def _check_input(path: PathLike) -> Path:
    """Fail early, naming the file, if it cannot be a table at all."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), None, "no such file")
    if p.is_dir():
        raise InputError(str(path), None, "is a directory, not a file")
    if p.stat().st_size == 0:
        raise InputError(str(path), None, "empty file")
    return p


def _require_columns(path: PathLike, available: Sequence[Any], wanted: Sequence[str] | None,
                     line: int | None = None) -> None:
    """A requested column that the file lacks is the user's typo: say which ones exist."""
    if not wanted:
        return
    missing = [c for c in wanted if c not in set(available)]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        have = ", ".join(str(c) for c in available) or "none"
        raise InputError(str(path), line, f"no column {names} (columns: {have})")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def read_table_chunks(path: PathLike, chunk_size: int = 20_000, columns: Sequence[str] | None = None,
                      fmt: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the table at ``path`` as DataFrames of at most ``chunk_size`` rows.

    The first chunk is read before this returns, so a missing file, a bad header, an unknown column
    or an error in the first rows raises here, before the caller starts any work. At least one chunk
    is always yielded (empty, with the columns, for a header-only file). ``columns`` selects and
    orders columns; one the file lacks is an InputError listing the columns it has.
    """
    fmt = _resolve_format(path, fmt)
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be at least 1, not {chunk_size}")
    p = _check_input(path)
    wanted = list(columns) if columns is not None else None
    chunks = _READERS[fmt](p, chunk_size, wanted)
    first = next(chunks)
    return _number_rows(itertools.chain([first], chunks))


def read_table(path: PathLike, fmt: str | None = None) -> pd.DataFrame:
    """The whole table in one DataFrame, for inputs known to be small (same rules as the chunks)."""
    frames = list(read_table_chunks(path, chunk_size=100_000, fmt=fmt))
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


# ---- CSV / TSV -----------------------------------------------------------------------------------

def _csv_options(sep: str) -> dict[str, Any]:
    """read_csv settings that keep text as text and only empty cells missing."""
    return {
        "sep": sep, "dtype": str, "keep_default_na": False, "na_values": [""],
        "encoding": "utf-8-sig", "index_col": False, "engine": "c", "quotechar": '"',
        "doublequote": True, "skip_blank_lines": True,
    }


def _csv_chunks(path: Path, chunk_size: int, columns: list[str] | None, sep: str
                ) -> Iterator[pd.DataFrame]:
    """Stream a delimited file with pandas' C parser, translating its errors to file:line."""
    header = _csv_header(path, sep)
    _require_columns(path, header, columns)
    options = {**_csv_options(sep), "chunksize": chunk_size, "usecols": columns}
    produced = False
    try:
        with pd.read_csv(path, **options) as reader:
            while (chunk := _next_csv_chunk(reader)) is not None:
                _reject_nul(path, chunk)
                produced = True
                yield chunk[columns] if columns else chunk
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError,
            UnicodeDecodeError) as exc:
        raise _csv_error(path, sep, exc) from None
    if not produced:
        yield pd.DataFrame({c: pd.Series(dtype=_TEXT_DTYPE) for c in (columns or header)})


def _csv_header(path: Path, sep: str) -> list[str]:
    """The column names (reads only the first buffer)."""
    try:
        names = pd.read_csv(path, nrows=0, **_csv_options(sep)).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _csv_error(path, sep, exc) from None
    if any("\x00" in str(name) for name in names):
        raise _nul_error(path)
    return names


def _next_csv_chunk(reader: Any) -> pd.DataFrame | None:
    """Next chunk, or None at the end.

    pandas only *warns* (and silently drops cells) when the first data row has more fields than the
    header; that warning is made an error here. The filter is scoped to this one call, never across
    a ``yield``, so it cannot leak into the caller.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return next(reader)
        except StopIteration:
            return None


def _reject_nul(path: Path, chunk: pd.DataFrame) -> None:
    """NUL bytes mean a binary or UTF-16 file; pandas would pass them through as text."""
    if _any_cell_contains(chunk, "\x00"):
        raise _nul_error(path)


def _any_cell_contains(frame: pd.DataFrame, text: str, unless: str | None = None) -> bool:
    """Whether any text cell contains ``text`` (and not ``unless``), vectorised column by column."""
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if column.dtype != object and not pd.api.types.is_string_dtype(column.dtype):
            continue
        try:
            hits = column.str.contains(text, regex=False, na=False)
            if unless is not None and hits.any():
                hits &= ~column.str.contains(unless, regex=False, na=False)
        except AttributeError:  # an object column without any str has no .str
            continue
        if hits.any():
            return True
    return False


_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_RE = re.compile(r"EOF inside string starting at row (\d+)")


def _csv_error(path: Path, sep: str, exc: Exception) -> InputError:
    """Turn a pandas parser error into InputError(path, line, problem).

    pandas counts *records* (header and blank lines included), not physical lines, so a record
    number is mapped to the line an editor shows by re-reading the file with the csv module; this
    second pass only happens on error.
    """
    if isinstance(exc, UnicodeDecodeError):
        return _utf8_error(path)
    if isinstance(exc, pd.errors.EmptyDataError):
        return InputError(str(path), None, "empty file (no header row)")
    if isinstance(exc, pd.errors.ParserWarning):
        found = _first_long_record(path, sep)
        if found is not None:
            line, expected, saw = found
            return InputError(str(path), line, f"bad CSV: expected {expected} fields, found {saw} "
                                               "(unbalanced quotes?)")
    message = str(exc).strip()
    if match := _FIELDS_RE.search(message):
        expected, record, saw = (int(g) for g in match.groups())
        line = _record_start_line(path, sep, record - 1)
        return InputError(str(path), line, f"bad CSV: expected {expected} fields, found {saw} "
                                           "(unbalanced quotes?)")
    if match := _EOF_RE.search(message):
        line = _record_start_line(path, sep, int(match.group(1)))
        return InputError(str(path), line, "bad CSV: a quoted field starting on this line never "
                                           "ends (unbalanced quotes?)")
    return InputError(str(path), None, f"bad CSV: {message}")


def _csv_records(path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of every record, blank lines included, as pandas counts them."""
    old_limit = csv.field_size_limit(sys.maxsize)  # speeches can exceed the 128 KiB default
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle, delimiter=sep, quotechar='"', doublequote=True)
            start = 1
            for row in reader:
                yield start, row
                start = reader.line_num + 1
    finally:
        csv.field_size_limit(old_limit)


def _record_start_line(path: Path, sep: str, record: int) -> int | None:
    """Physical line on which 0-based ``record`` starts."""
    for index, (line, _row) in enumerate(_csv_records(path, sep)):
        if index == record:
            return line
    return None


def _first_long_record(path: Path, sep: str) -> tuple[int, int, int] | None:
    """(line, header fields, fields) of the first record longer than the header."""
    records = _csv_records(path, sep)
    header = next(records, None)
    if header is None:
        return None
    for line, row in records:
        if len(row) > len(header[1]):
            return line, len(header[1]), len(row)
    return None


def _utf8_error(path: Path) -> InputError:
    """Say where the file stops being UTF-8 (a multi-byte character never spans a newline, so
    decoding line by line finds the exact line)."""
    with open(path, "rb") as handle:
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return InputError(str(path), None, "file is UTF-16, not UTF-8: save it as UTF-8")
        handle.seek(0)
        for line, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputError(str(path), line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at "
                                                   f"column {exc.start + 1} (Latin-1/Windows-1252? "
                                                   "save the file as UTF-8)")
    return InputError(str(path), None, "not UTF-8 (save the file as UTF-8)")


def _nul_error(path: Path) -> InputError:
    """Name the first line holding a NUL byte."""
    line = 1
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            at = block.find(b"\x00")
            if at >= 0:
                line += block.count(b"\n", 0, at)
                break
            line += block.count(b"\n")
    return InputError(str(path), line, "NUL byte in a text file (binary, or UTF-16 text? "
                                       "save it as UTF-8)")


# ---- Parquet -------------------------------------------------------------------------------------

def _open_parquet(path: Path) -> pq.ParquetFile:
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
    parquet = _open_parquet(path)
    _require_columns(path, parquet.schema_arrow.names, columns)
    produced = False
    try:
        for batch in parquet.iter_batches(batch_size=chunk_size, columns=columns):
            produced = True
            yield _batch_frame(batch, columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(str(path), None, f"corrupt Parquet data: {exc}") from None
    if not produced:
        empty = parquet.schema_arrow.empty_table()
        yield _batch_frame(empty.select(columns) if columns else empty, columns)


def _batch_frame(batch: pa.RecordBatch | pa.Table, columns: list[str] | None) -> pd.DataFrame:
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
        raise InputError(str(path), line, "NUL byte in a text file (binary, or UTF-16 text?)")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _utf8_error(path) from None
        raise InputError(str(path), line, f"bad JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(str(path), line, f"expected a JSON object, found {type(value).__name__}")
    return value


def _records_frame(path: Path, rows: list[dict[str, Any]], columns: list[str] | None,
                   first: bool) -> pd.DataFrame:
    """A DataFrame from parsed objects, with each column given the narrowest faithful dtype."""
    frame = pd.DataFrame(rows, dtype=object)
    if first:
        _require_columns(path, list(frame.columns), columns)
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
        "string": _TEXT_DTYPE,
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


# ---- Excel ---------------------------------------------------------------------------------------

def _excel_engine(path: PathLike) -> str:
    """openpyxl for .xlsx, xlrd for legacy .xls; a UsageError with the pip command if absent."""
    engine = "xlrd" if Path(path).suffix.lower() == ".xls" else "openpyxl"
    try:
        importlib.import_module(engine)
    except ImportError:
        raise UsageError(f"{path}: Excel files need the {engine} package: pip install {engine}"
                         ) from None
    return engine


def _excel_chunks(path: Path, chunk_size: int, columns: list[str] | None
                  ) -> Iterator[pd.DataFrame]:
    """Excel cannot be streamed by openpyxl: read the first sheet whole (as text), then slice."""
    engine = _excel_engine(path)
    try:
        frame = pd.read_excel(path, sheet_name=0, dtype=str, keep_default_na=False,
                              na_values=[""], engine=engine)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise InputError(str(path), None, f"not a readable Excel file ({exc})") from None
    _require_columns(path, list(frame.columns), columns)
    if columns:
        frame = frame[columns]
    for start in range(0, max(len(frame), 1), chunk_size):
        yield frame.iloc[start:start + chunk_size].copy()


_READERS = {
    "csv": lambda p, n, c: _csv_chunks(p, n, c, ","),
    "tsv": lambda p, n, c: _csv_chunks(p, n, c, "\t"),
    "parquet": _parquet_chunks,
    "jsonl": _jsonl_chunks,
    "excel": _excel_chunks,
}


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------

def count_rows(path: PathLike, fmt: str | None = None) -> int | None:
    """Number of data rows, cheaply, for progress bars and estimates; None when unknown.

    * Parquet: exact, from the footer metadata.
    * CSV/TSV: a vectorised scan counting non-blank records outside double quotes (so newlines
      inside quoted cells are not rows), minus the header. Exact for RFC 4180 files; None when the
      quotes do not balance, where only a full parse could tell.
    * JSONL: non-blank lines.
    * Excel: the sheet's recorded dimension, or None if the file does not record it.
    """
    fmt = _resolve_format(path, fmt)
    p = _check_input(path)
    if fmt == "parquet":
        return _open_parquet(p).metadata.num_rows
    if fmt == "excel":
        return _excel_row_count(p)
    records = _count_records(p, quoted=fmt in _SEPARATORS)
    if records is None:
        return None
    return max(records - 1, 0) if fmt in _SEPARATORS else records


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


def _excel_row_count(path: Path) -> int | None:
    """Rows of the first sheet from its stored dimension (read-only mode loads no cells)."""
    engine = _excel_engine(path)
    if engine != "openpyxl":
        return None
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise InputError(str(path), None, f"not a readable Excel file ({exc})") from None
    try:
        rows = book.worksheets[0].max_row
    finally:
        book.close()
    return max(rows - 1, 0) if rows else None


# --------------------------------------------------------------------------------------------------
# Conversion helpers
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


_FORMULA_START = r"^[=+\-@\t\r]"
_PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def neutralize_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` where text cells a spreadsheet would run as a formula start with ``'``.

    Excel, LibreOffice and Google Sheets execute a CSV cell starting with ``= + - @`` (or a tab or
    carriage return before one), which lets text from a model or a scraped article run commands on
    the analyst's machine (OWASP "CSV injection"; the quote is OWASP's advice and is hidden by the
    spreadsheet). Plain numbers such as ``-5`` or ``+3.2e4`` are left alone: they are not formulas.
    Non-text columns are untouched.
    """
    out = df.copy()
    for i in range(out.shape[1]):
        column = out.iloc[:, i]
        if column.dtype == object:
            out.isetitem(i, column.map(_neutralize_cell))
        elif pd.api.types.is_string_dtype(column.dtype):
            risky = (column.str.match(_FORMULA_START, na=False)
                     & ~column.str.match(_PLAIN_NUMBER, na=False))
            if risky.any():
                out.isetitem(i, column.where(~risky, "'" + column))
    return out


def _neutralize_cell(value: Any) -> Any:
    """Per-cell version for object columns, where only the str cells are candidates."""
    if (isinstance(value, str) and re.match(_FORMULA_START, value)
            and not re.match(_PLAIN_NUMBER, value)):
        return "'" + value
    return value


def _nested_to_json(df: pd.DataFrame) -> pd.DataFrame:
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
    return orjson.dumps(value, option=_JSON_OPTIONS, default=_json_default).decode()


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(value: Any) -> Any:
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


def _arrow_column(values: pd.Series) -> pa.Array:
    """An Arrow array for a pandas column, with a type that later chunks can be cast to.

    All-null columns become string (not the ``null`` type, which would fix the file's schema to
    nothing useful), large_string becomes string, and object columns that Arrow cannot type
    (mixed values) become text, with lists and dicts as JSON.
    """
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        text = values.map(lambda v: v if v is None or isinstance(v, str) or _is_missing(v)
                          else _json_text(v) if _is_nested(v) else str(v))
        array = pa.array(text, type=pa.string(), from_pandas=True)
    if pa.types.is_null(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    return array


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

class TableWriter:
    """Write a table chunk by chunk, in the format of the output's extension.

    Everything goes to ``<path>.part``; ``close(complete=True)`` renames it to ``path``, so a file at
    ``path`` is always a complete output and a crash never leaves a half file under the real name.
    ``close(complete=False)`` (and leaving the ``with`` block by an exception) keeps the partial
    ``.part`` for inspection; a Parquet ``.part`` is still a readable file of the rows so far.

    The first chunk fixes the columns: later chunks are reordered to them, missing columns are
    written empty, and an unexpected new column is a UsageError (a CSV header is already written).
    For Parquet it also fixes the schema; a later chunk is cast to it, or raises a UsageError naming
    the column.

    ``neutralize_formulas`` (default on) applies to CSV/TSV only, because spreadsheets execute cells
    that look like formulas (see :func:`neutralize_formulas`). Parquet and JSONL are data formats
    and are written unchanged; Excel output is written with every text cell typed as text, so no
    cell is ever a formula and nothing needs changing. (Excel's XML does turn a carriage return
    inside a cell into a line feed: use CSV, Parquet or JSONL where that matters.)
    """

    def __init__(self, path: PathLike, fmt: str | None = None, *,
                 neutralize_formulas: bool = True) -> None:
        self.path = Path(path)
        self.fmt = _resolve_format(path, fmt)
        self.part_path = Path(f"{self.path}.part")
        self.neutralize = neutralize_formulas and self.fmt in _SEPARATORS
        self.rows_written = 0
        self._columns: list[Any] | None = None
        self._schema: pa.Schema | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._handle: IO[Any] | None = None
        self._excel: Any = None
        self._sheet: Any = None
        self._closed = False
        self._header_done = False
        if not self.path.parent.is_dir():
            raise UsageError(f"{self.path}: directory {self.path.parent} does not exist")
        # Locked before anything truncates it: a second job on the same output must not empty the
        # file the first one is writing (see corral.locks).
        self._lock = FileLock(self.part_path, (
            f"{self.path}: another corral process is writing this output ({self.part_path.name}); "
            "wait for it to finish, or choose another output"))
        try:
            if self.fmt == "excel":
                self._open_excel()
            elif self.fmt != "parquet":
                mode = "wb" if self.fmt == "jsonl" else "w"
                text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
                self._handle = open(self.part_path, mode, **text)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            self._lock.release()
            raise UsageError(f"{self.path}: cannot write the output: {exc.strerror or exc}") from None
        except BaseException:
            self._lock.release()
            raise

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(complete=exc_type is None)

    def write(self, df: Any) -> None:
        """Append one chunk (pandas or polars); the first call also writes the header/schema."""
        if self._closed:
            raise UsageError(f"{self.path}: write after close")
        frame = self._align(to_pandas(df))
        try:
            {"csv": self._write_csv, "tsv": self._write_csv, "jsonl": self._write_jsonl,
             "parquet": self._write_parquet, "excel": self._write_excel}[self.fmt](frame)
        except OSError as exc:  # e.g. the disk filled up: one clear line, not a traceback
            raise UsageError(f"{self.path}: writing the output failed: {exc.strerror or exc}; "
                             "results are kept in the store, re-run to finish") from None
        self.rows_written += len(frame)

    def close(self, complete: bool = True) -> None:
        """Finish the file; rename ``.part`` to the real name only if ``complete``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.fmt == "parquet" and self._parquet is None:
                # Nothing written: still leave a valid (empty) Parquet file.
                self._parquet = pq.ParquetWriter(self.part_path, pa.schema([]))
            if self._parquet is not None:
                self._parquet.close()
            if self._excel is not None:
                self._excel.save(self.part_path)
            if self._handle is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
            if complete:
                os.replace(self.part_path, self.path)
        except OSError as exc:  # e.g. the disk filled up: one clear line, not a traceback
            raise UsageError(f"{self.path}: writing the output failed: {exc.strerror or exc}") from None
        finally:
            if self._handle is not None and not self._handle.closed:
                try:
                    self._handle.close()
                except OSError:
                    pass  # already reported above
            self._lock.release()

    # ---- per format --------------------------------------------------------------------------

    def _align(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Fix the columns on the first chunk; conform later chunks to them."""
        if self._columns is None:
            self._columns = list(frame.columns)
            return frame
        if list(frame.columns) == self._columns:
            return frame
        extra = [c for c in frame.columns if c not in set(self._columns)]
        if extra:
            raise UsageError(f"{self.path}: a later chunk has new columns {extra}; the first chunk "
                             f"fixed the columns to {self._columns}")
        return frame.reindex(columns=self._columns)

    def _write_csv(self, frame: pd.DataFrame) -> None:
        frame = _nested_to_json(frame)
        if self.neutralize:
            frame = neutralize_formulas(frame)
        # Python < 3.12's csv writer only quotes the characters of the line terminator, so with
        # "\n" a cell holding a "\r" but no "\n" would go out unquoted and split the row when read
        # back. Such (rare) chunks are written fully quoted instead: still standard CSV, same values.
        bare_cr = _any_cell_contains(frame, "\r", unless="\n")
        quoting = csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL
        assert self._handle is not None
        frame.to_csv(self._handle, sep=_SEPARATORS[self.fmt], header=not self._header_done,
                     index=False, quoting=quoting, lineterminator="\n", na_rep="")
        self._header_done = True

    def _write_jsonl(self, frame: pd.DataFrame) -> None:
        """orjson rather than ``to_json``: pandas rounds floats to 10 digits and escapes ``/``."""
        assert self._handle is not None
        names = [str(c) for c in frame.columns]
        lines = [orjson.dumps(dict(zip(names, row)), option=_JSON_OPTIONS, default=_json_default)
                 for row in frame.itertuples(index=False, name=None)]
        if lines:
            self._handle.write(b"\n".join(lines) + b"\n")

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        arrays = [_arrow_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
        names = [str(c) for c in frame.columns]
        if self._schema is None:
            self._schema = pa.schema([pa.field(n, a.type) for n, a in zip(names, arrays)])
            self._parquet = pq.ParquetWriter(self.part_path, self._schema)
        table = pa.Table.from_arrays(self._conform(names, arrays), schema=self._schema)
        assert self._parquet is not None
        self._parquet.write_table(table)

    def _conform(self, names: list[str], arrays: list[pa.Array]) -> list[pa.Array]:
        """Cast each array to the first chunk's type, or say which column cannot be."""
        assert self._schema is not None
        out = []
        for name, array, field in zip(names, arrays, self._schema):
            if array.type != field.type:
                try:
                    array = array.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise UsageError(f"{self.path}: column {name!r} was {field.type} in the first "
                                     f"chunk but is {array.type} here and cannot be converted "
                                     f"({exc})") from None
            out.append(array)
        return out

    def _open_excel(self) -> None:
        if self.path.suffix.lower() == ".xls":
            raise UsageError(f"{self.path}: cannot write legacy .xls; use .xlsx")
        _excel_engine(self.path)
        import openpyxl

        self._excel = openpyxl.Workbook(write_only=True)  # rows go to a temp file, not memory
        self._sheet = self._excel.create_sheet()

    def _write_excel(self, frame: pd.DataFrame) -> None:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.utils.exceptions import IllegalCharacterError

        if self.rows_written + len(frame) + 1 > EXCEL_MAX_ROWS:
            raise UsageError(f"{self.path}: more than {EXCEL_MAX_ROWS - 1} rows do not fit in an "
                             "Excel sheet; write .csv or .parquet")
        frame = _nested_to_json(frame)
        rows: Iterable[Sequence[Any]] = frame.itertuples(index=False, name=None)
        if not self._header_done:
            self._header_done = True
            rows = itertools.chain([list(map(str, frame.columns))], rows)
        try:
            for row in rows:
                self._sheet.append([self._excel_cell(WriteOnlyCell, v) for v in row])
        except IllegalCharacterError:
            raise UsageError(f"{self.path}: a cell holds a control character Excel cannot store; "
                             "write .csv or .parquet") from None

    def _excel_cell(self, cell_type: Any, value: Any) -> Any:
        """Text as an explicit text cell (openpyxl would make ``=...`` a formula); missing -> None."""
        if _is_missing(value):
            return None
        if isinstance(value, str):
            cell = cell_type(self._sheet, value=value)
            cell.data_type = "s"
            return cell
        return value.item() if isinstance(value, np.generic) else value


class TableStream:
    """A table job's file ends: input chunks read lazily (the first at once, so its columns are known
    before anything is sent) and the output written chunk by chunk as results come back."""

    def __init__(self, input_path: PathLike, output_path: PathLike, *, chunk_size: int,
                 neutralize_formulas: bool = True) -> None:
        self.input_path = Path(input_path)
        self._chunks = read_table_chunks(input_path, chunk_size=chunk_size)
        first = next(self._chunks, None)
        if first is None:
            raise UsageError(f"{input_path}: the table has no rows")
        self._first: pd.DataFrame | None = first
        self.columns = [str(c) for c in first.columns]
        self.writer = TableWriter(output_path, neutralize_formulas=neutralize_formulas)
        self.written = 0

    def require_columns(self, names: Iterable[str]) -> None:
        """Columns the job reads but the input lacks: an InputError naming the file (and the header
        line of a delimited file), before anything is sent."""
        header = 1 if _resolve_format(self.input_path, None) in _SEPARATORS else None
        _require_columns(self.input_path, self.columns, [n for n in names if n], header)

    def chunks(self) -> Iterator[pd.DataFrame]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._chunks

    def emit(self, frame: pd.DataFrame) -> None:
        self.writer.write(frame)
        self.written += len(frame)

    def close(self, complete: bool = True) -> None:
        self.writer.close(complete=complete)
        if not complete and self.written == 0:
            self.writer.part_path.unlink(missing_ok=True)  # nothing written: no stray .part file
