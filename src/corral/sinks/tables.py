"""Table outputs (CSV, TSV, Parquet, JSONL, Excel) written chunk by chunk, whole or not at all.

Inputs can have a million rows, so nothing is held in memory: :class:`TableWriter` appends one
DataFrame chunk at a time to an :class:`~corral.sinks.output.AtomicOutput`. Text round-trips
unchanged (a missing value is an empty CSV cell; lists and dicts are JSON), except that CSV/TSV
cells a spreadsheet would run as formulas are neutralised (:func:`neutralize_formulas`). Reading is
:mod:`corral.sources.tables`.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError
from ..sources.delimited import SEPARATORS
from ..sources.excel import EXCEL_MAX_ROWS, excel_engine
from ..sources.table_checks import any_cell_contains
from ..sources.tables import resolve_format, to_pandas
from .cells import JSON_OPTIONS, arrow_column, is_missing, json_default, nested_to_json
from .output import AtomicOutput

__all__ = ["TableWriter", "neutralize_formulas"]

PathLike = str | os.PathLike[str]


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
            # A formula's first character by a vectorised slice (not a regex per chunk); the
            # plain-number regex only when some cell starts like a formula.
            risky = column.str.slice(0, 1).isin(_RISKY_FIRST_LIST).fillna(False).astype(bool)
            if risky.any():
                risky &= ~column.str.match(_PLAIN_NUMBER, na=False)
            if risky.any():
                out.isetitem(i, column.where(~risky, "'" + column))
    return out


_RISKY_FIRST = frozenset("=+-@\t\r")  # a cell starting with one of these is run as a formula
_RISKY_FIRST_LIST = sorted(_RISKY_FIRST)
_PLAIN_NUMBER_RE = re.compile(_PLAIN_NUMBER)


def _neutralize_cell(value: Any) -> Any:
    """Per-cell version for object columns, where only the str cells are candidates (most are
    ruled out by their first character, without a regex)."""
    if (isinstance(value, str) and value[:1] in _RISKY_FIRST
            and not _PLAIN_NUMBER_RE.match(value)):
        return "'" + value
    return value



#: Rows of a chunk written to a CSV or TSV at a time.
CSV_SLICE_ROWS = 2048


class TableWriter:
    """Write a table chunk by chunk, in the format of the output's extension.

    The file is an :class:`~corral.sinks.output.AtomicOutput`: written to ``<path>.part`` and renamed
    by ``close(complete=True)``, so a file at ``path`` is always a complete output. ``close(complete=
    False)`` (and leaving the ``with`` block by an exception) follows that module's one rule: the
    ``.part`` is kept for inspection if it holds rows (a Parquet ``.part`` is then a readable file of
    the rows so far), removed if not. ``inputs`` are the files the job reads: writing onto one of
    them is refused before anything is written. A FIFO or device output is streamed in place.

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

    def __init__(self, path: PathLike, fmt: str | None = None, *, neutralize_formulas: bool = True,
                 inputs: Iterable[PathLike] = ()) -> None:
        self.path = Path(path)
        self.fmt = resolve_format(path, fmt)
        self.neutralize = neutralize_formulas and self.fmt in SEPARATORS
        self.rows_written = 0
        self._columns: list[Any] | None = None
        self._schema: pa.Schema | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._handle: IO[Any] | None = None
        self._excel: Any = None
        self._sheet: Any = None
        self._closed = False
        self._header_done = False
        if not Path(os.path.realpath(self.path)).parent.is_dir():
            raise UsageError(f"{self.path}: directory {self.path.parent} does not exist")
        self.output = AtomicOutput(self.path, inputs=inputs)
        try:
            if self.fmt == "excel":
                self._open_excel()
            elif self.fmt != "parquet":
                text = {} if self.fmt == "jsonl" else {"encoding": "utf-8", "newline": ""}
                self._handle = self.output.open("wb" if self.fmt == "jsonl" else "w", **text)
        except OSError as exc:
            self.output.abort()
            raise UsageError(f"{self.path}: cannot write the output: {exc.strerror or exc}") from None
        except BaseException:
            self.output.abort()
            raise

    @property
    def part_path(self) -> Path:
        """Where the rows go until the file is complete (the stream itself for a FIFO or device)."""
        return self.output.path_for_writing

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
            if self.fmt == "parquet" and self._parquet is None and complete:
                # Nothing written: still leave a valid (empty) Parquet file.
                self._parquet = pq.ParquetWriter(self.part_path, pa.schema([]))
            if self._parquet is not None:
                self._parquet.close()
            if self._excel is not None and (complete or self.rows_written):
                self._excel.save(self.part_path)
            if self._handle is not None:
                self._handle.close()
            self.output.finish(complete, rows=self.rows_written)
        except OSError as exc:  # e.g. the disk filled up: one clear line, not a traceback
            raise UsageError(f"{self.path}: writing the output failed: {exc.strerror or exc}") from None
        finally:
            if self._handle is not None and not self._handle.closed:
                try:
                    self._handle.close()
                except OSError:
                    pass  # already reported above
            self.output.abort(rows=self.rows_written)  # a no-op once finished; else the one rule

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
        """In slices of `CSV_SLICE_ROWS`: the text cells' copies made on the way out (formulas
        neutralized, pandas' strings boxed for the csv module) then take the memory of a slice,
        not of the chunk (an analysis's chunk of 20,000 answers doubled its peak otherwise)."""
        for start in range(0, max(len(frame), 1), CSV_SLICE_ROWS):
            self._write_csv_slice(frame.iloc[start:start + CSV_SLICE_ROWS])

    def _write_csv_slice(self, frame: pd.DataFrame) -> None:
        frame = nested_to_json(frame)
        if self.neutralize:
            frame = neutralize_formulas(frame)
            if not self._header_done:  # a header cell is a cell too: "=cmd|..." as a column name
                frame.columns = [_neutralize_cell(str(c)) for c in frame.columns]
        # Python < 3.12's csv writer only quotes the characters of the line terminator, so with
        # "\n" a cell holding a "\r" but no "\n" would go out unquoted and split the row when read
        # back. Such (rare) chunks are written fully quoted instead: still standard CSV, same values.
        bare_cr = any_cell_contains(frame, "\r", unless="\n")
        quoting = csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL
        assert self._handle is not None
        frame.to_csv(self._handle, sep=SEPARATORS[self.fmt], header=not self._header_done,
                     index=False, quoting=quoting, lineterminator="\n", na_rep="")
        self._header_done = True

    def _write_jsonl(self, frame: pd.DataFrame) -> None:
        """orjson rather than ``to_json``: pandas rounds floats to 10 digits and escapes ``/``."""
        assert self._handle is not None
        names = [str(c) for c in frame.columns]
        lines = [orjson.dumps(dict(zip(names, row)), option=JSON_OPTIONS, default=json_default)
                 for row in frame.itertuples(index=False, name=None)]
        if lines:
            self._handle.write(b"\n".join(lines) + b"\n")

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        arrays = [arrow_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
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
        excel_engine(self.path)
        import openpyxl

        self._excel = openpyxl.Workbook(write_only=True)  # rows go to a temp file, not memory
        self._sheet = self._excel.create_sheet()

    def _write_excel(self, frame: pd.DataFrame) -> None:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.utils.exceptions import IllegalCharacterError

        if self.rows_written + len(frame) + 1 > EXCEL_MAX_ROWS:
            raise UsageError(f"{self.path}: more than {EXCEL_MAX_ROWS - 1} rows do not fit in an "
                             "Excel sheet; write .csv or .parquet")
        frame = nested_to_json(frame)
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
        if is_missing(value):
            return None
        if isinstance(value, str):
            cell = cell_type(self._sheet, value=value)
            cell.data_type = "s"
            return cell
        return value.item() if isinstance(value, np.generic) else value

