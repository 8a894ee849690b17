"""A table job's two file ends: the input read in chunks, the output written as results come back."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from ..errors import UsageError
from ..sinks.tables import TableWriter
from ..sources.delimited import SEPARATORS
from ..sources.table_checks import require_columns
from ..sources.tables import read_table_chunks, resolve_format

__all__ = ["TableStream"]

PathLike = str | os.PathLike[str]


class TableStream:
    """Input chunks read lazily (the first at once, so its columns are known before anything is
    sent) and the output written chunk by chunk. The output is refused if it is the input file."""

    def __init__(self, input_path: PathLike, output_path: PathLike, *, chunk_size: int,
                 neutralize_formulas: bool = True, chunks: Iterable[pd.DataFrame] | None = None,
                 encoding: str | None = None) -> None:
        self.input_path = Path(input_path)
        # ``chunks``: the input read another way (a run of a Parquet file's row groups)
        self._chunks = iter(chunks) if chunks is not None else read_table_chunks(
            input_path, chunk_size=chunk_size, encoding=encoding)
        first = next(self._chunks, None)
        if first is None:
            raise UsageError(f"{input_path}: the table has no rows")
        self._first: pd.DataFrame | None = first
        self.columns = [str(c) for c in first.columns]
        self.writer = TableWriter(output_path, neutralize_formulas=neutralize_formulas,
                                  inputs=(input_path,))
        self.written = 0

    def require_columns(self, names: Iterable[str]) -> None:
        """Columns the job reads but the input lacks: an InputError naming the file (and the header
        line of a delimited file), before anything is sent."""
        header = 1 if resolve_format(self.input_path, None) in SEPARATORS else None
        require_columns(self.input_path, self.columns, [n for n in names if n], header)

    def chunks(self) -> Iterator[pd.DataFrame]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._chunks

    def emit(self, frame: pd.DataFrame) -> None:
        self.writer.write(frame)
        self.written += len(frame)

    def close(self, complete: bool = True) -> None:
        """Finish the output (see corral.sinks.output for what an incomplete one leaves)."""
        self.writer.close(complete=complete)
