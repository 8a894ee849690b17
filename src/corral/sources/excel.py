"""Excel sheets as table chunks. openpyxl cannot stream a sheet, so the first sheet is read whole
and then cut into chunks (a sheet tops out at about a million rows anyway)."""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ..errors import InputError, UsageError
from .table_checks import require_columns

__all__ = ["EXCEL_MAX_ROWS", "excel_chunks", "excel_engine", "excel_row_count"]

PathLike = str | os.PathLike[str]

EXCEL_MAX_ROWS = 1_048_576  # including the header row


def excel_engine(path: PathLike) -> str:
    """openpyxl for .xlsx, xlrd for legacy .xls; a UsageError with the pip command if absent."""
    engine = "xlrd" if Path(path).suffix.lower() == ".xls" else "openpyxl"
    try:
        importlib.import_module(engine)
    except ImportError:
        raise UsageError(f"{path}: Excel files need the {engine} package: pip install {engine}"
                         ) from None
    return engine


def excel_chunks(path: Path, chunk_size: int, columns: list[str] | None
                  ) -> Iterator[pd.DataFrame]:
    """Excel cannot be streamed by openpyxl: read the first sheet whole (as text), then slice."""
    engine = excel_engine(path)
    try:
        frame = pd.read_excel(path, sheet_name=0, dtype=str, keep_default_na=False,
                              na_values=[""], engine=engine)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise InputError(str(path), None, f"not a readable Excel file ({exc})") from None
    require_columns(path, list(frame.columns), columns)
    if columns:
        frame = frame[columns]
    for start in range(0, max(len(frame), 1), chunk_size):
        yield frame.iloc[start:start + chunk_size].copy()


def excel_row_count(path: Path) -> int | None:
    """Rows of the first sheet from its stored dimension (read-only mode loads no cells)."""
    engine = excel_engine(path)
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
