"""CSV and TSV read in chunks with pandas' C parser, its errors turned into file:line messages.

Cells are read as text (``"00123"`` keeps its zeros) and only an empty cell is missing. Files are
UTF-8 unless an ``encoding`` is given (cp1252, latin-1, utf-16: what spreadsheets on Windows save);
a file that does not decode is an error naming the file, the line and the ``--encoding`` to try. pandas
reports problems by *record*, and only warns about a first row longer than the header; both are
mapped here to the line an editor shows, re-reading the file only when there is an error.
"""

from __future__ import annotations

import codecs
import csv
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError, UsageError
from .table_checks import TEXT_DTYPE, any_cell_contains, nul_error, require_columns, utf8_error

__all__ = ["DEFAULT_ENCODING", "ENCODING_HINT", "SEPARATORS", "check_encoding", "csv_chunks"]

#: The way out of a file that is not UTF-8, said with the error.
ENCODING_HINT = "give the file's encoding with --encoding (encoding= in Python), e.g. --encoding cp1252"

#: Delimited format -> separator.
SEPARATORS = {"csv": ",", "tsv": "\t"}


#: What a file is read as when no encoding is given (a BOM, as Excel writes, is skipped).
DEFAULT_ENCODING = "utf-8-sig"


def check_encoding(encoding: str | None) -> str:
    """The codec to read with; an unknown name is a UsageError before the file is opened."""
    if encoding is None:
        return DEFAULT_ENCODING
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1, utf-16)") from None
    return DEFAULT_ENCODING if name == "utf-8" else encoding


def _csv_options(sep: str, encoding: str = DEFAULT_ENCODING) -> dict[str, Any]:
    """read_csv settings that keep text as text and only empty cells missing."""
    return {
        "sep": sep, "dtype": str, "keep_default_na": False, "na_values": [""],
        "encoding": encoding, "index_col": False, "engine": "c", "quotechar": '"',
        "doublequote": True, "skip_blank_lines": True,
    }


def csv_chunks(path: Path, chunk_size: int, columns: list[str] | None, sep: str,
               encoding: str | None = None) -> Iterator[pd.DataFrame]:
    """Stream a delimited file with pandas' C parser, translating its errors to file:line."""
    codec = check_encoding(encoding)
    header = _csv_header(path, sep, codec)
    require_columns(path, header, columns)
    options = {**_csv_options(sep, codec), "chunksize": chunk_size, "usecols": columns}
    produced = False
    try:
        with pd.read_csv(path, **options) as reader:
            while (chunk := _next_csv_chunk(reader)) is not None:
                _reject_nul(path, chunk)
                produced = True
                yield chunk[columns] if columns else chunk
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError,
            UnicodeDecodeError) as exc:
        raise _csv_error(path, sep, exc, codec) from None
    if not produced:
        yield pd.DataFrame({c: pd.Series(dtype=TEXT_DTYPE) for c in (columns or header)})


def _csv_header(path: Path, sep: str, codec: str) -> list[str]:
    """The column names (reads only the first buffer)."""
    try:
        names = pd.read_csv(path, nrows=0, **_csv_options(sep, codec)).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _csv_error(path, sep, exc, codec) from None
    if any("\x00" in str(name) for name in names):
        raise nul_error(path, ENCODING_HINT)
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
    if any_cell_contains(chunk, "\x00"):
        raise nul_error(path, ENCODING_HINT)



_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EOF_RE = re.compile(r"EOF inside string starting at row (\d+)")


def _csv_error(path: Path, sep: str, exc: Exception, codec: str = DEFAULT_ENCODING) -> InputError:
    """Turn a pandas parser error into InputError(path, line, problem).

    pandas counts *records* (header and blank lines included), not physical lines, so a record
    number is mapped to the line an editor shows by re-reading the file with the csv module; this
    second pass only happens on error.
    """
    if isinstance(exc, UnicodeDecodeError):
        if codec == DEFAULT_ENCODING:
            return utf8_error(path, ENCODING_HINT)
        return InputError(str(path), None, f"cannot be read as {codec} ({exc.reason}); "
                                           f"is that its encoding? {ENCODING_HINT}")
    if isinstance(exc, pd.errors.EmptyDataError):
        return InputError(str(path), None, "empty file (no header row)")
    if isinstance(exc, pd.errors.ParserWarning):
        found = _first_long_record(path, sep, codec)
        if found is not None:
            long_line, expected, saw = found
            return InputError(str(path), long_line, f"bad CSV: expected {expected} fields, found {saw} "
                                                    "(unbalanced quotes?)")
    message = str(exc).strip()
    if match := _FIELDS_RE.search(message):
        expected, record, saw = (int(g) for g in match.groups())
        line = _record_start_line(path, sep, record - 1, codec)
        return InputError(str(path), line, f"bad CSV: expected {expected} fields, found {saw} "
                                           "(unbalanced quotes?)")
    if match := _EOF_RE.search(message):
        line = _record_start_line(path, sep, int(match.group(1)), codec)
        return InputError(str(path), line, "bad CSV: a quoted field starting on this line never "
                                           "ends (unbalanced quotes?)")
    return InputError(str(path), None, f"bad CSV: {message}")


def _csv_records(path: Path, sep: str, codec: str = DEFAULT_ENCODING) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of every record, blank lines included, as pandas counts them."""
    old_limit = csv.field_size_limit(sys.maxsize)  # speeches can exceed the 128 KiB default
    try:
        with open(path, encoding=codec, errors="replace", newline="") as handle:
            reader = csv.reader(handle, delimiter=sep, quotechar='"', doublequote=True)
            start = 1
            for row in reader:
                yield start, row
                start = reader.line_num + 1
    finally:
        csv.field_size_limit(old_limit)


def _record_start_line(path: Path, sep: str, record: int, codec: str = DEFAULT_ENCODING) -> int | None:
    """Physical line on which 0-based ``record`` starts."""
    for index, (line, _row) in enumerate(_csv_records(path, sep, codec)):
        if index == record:
            return line
    return None


def _first_long_record(path: Path, sep: str, codec: str = DEFAULT_ENCODING) -> tuple[int, int, int] | None:
    """(line, header fields, fields) of the first record longer than the header."""
    records = _csv_records(path, sep, codec)
    header = next(records, None)
    if header is None:
        return None
    for line, row in records:
        if len(row) > len(header[1]):
            return line, len(header[1]), len(row)
    return None

