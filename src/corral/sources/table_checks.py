"""What every table reader checks: the columns asked for exist, and text is UTF-8 without NUL bytes.

Shared by the format readers (and the CSV writer's carriage-return check) so each error names the
file and line the same way, whatever the format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputError
from .jsonl import wide_encoding

__all__ = ["TEXT_DTYPE", "any_cell_contains", "nul_error", "require_columns", "utf8_error"]

PathLike = str | os.PathLike[str]

# pandas >= 3 has a real text dtype ("str", NaN for missing); pandas 2's "str" would turn NaN into "nan".
TEXT_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def require_columns(path: PathLike, available: Sequence[Any], wanted: Sequence[str] | None,
                     line: int | None = None) -> None:
    """A requested column that the file lacks is the user's typo: say which ones exist."""
    if not wanted:
        return
    missing = [c for c in wanted if c not in set(available)]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        have = ", ".join(str(c) for c in available) or "none"
        raise InputError(str(path), line, f"no column {names} (columns: {have})")


def any_cell_contains(frame: pd.DataFrame, text: str, unless: str | None = None) -> bool:
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


def utf8_error(path: Path, hint: str | None = None) -> InputError:
    """Say where the file stops being UTF-8 (a multi-byte character never spans a newline, so
    decoding line by line finds the exact line); ``hint`` is the reader's way out (its --encoding)."""
    with open(path, "rb") as handle:
        wide = wide_encoding(handle.read(4))
        if wide:
            return InputError(str(path), None, f"file is {wide}, not UTF-8: "
                              + (hint.replace("cp1252", wide.lower()) if hint else "save it as UTF-8"))
        handle.seek(0)
        for line, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputError(str(path), line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at "
                                                   f"column {exc.start + 1} (Latin-1/Windows-1252? "
                                                   + (f"{hint})" if hint else "save the file as UTF-8)"))
    return InputError(str(path), None, "not UTF-8 " + (f"({hint})" if hint else "(save the file as UTF-8)"))


def nul_error(path: Path, hint: str | None = None) -> InputError:
    """Name the first line holding a NUL byte (or the wide encoding whose text is full of them)."""
    line = 1
    with open(path, "rb") as handle:
        wide = wide_encoding(handle.read(4))
        if wide:
            return InputError(str(path), None, f"file is {wide}, not UTF-8: "
                              + (hint.replace("cp1252", wide.lower()) if hint else "save it as UTF-8"))
        handle.seek(0)
        while block := handle.read(1 << 20):
            at = block.find(b"\x00")
            if at >= 0:
                line += block.count(b"\n", 0, at)
                break
            line += block.count(b"\n")
    way_out = hint.replace("cp1252", "utf-16") if hint else "save it as UTF-8"
    return InputError(str(path), line, f"NUL byte in a text file (binary, or UTF-16 text? {way_out})")
