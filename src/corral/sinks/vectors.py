"""Vector files: Parquet (ids + a fixed-size float32 list column), .npy (+ ids), or JSONL.

Each file is an :class:`~corral.sinks.output.AtomicOutput`: written to ``<name>.part`` and renamed
on success, so an interrupted job never leaves a file that looks finished (an incomplete ``.part``
follows that module's one rule). The readers give back an earlier output's vectors by row id, which
is what ``--skip-existing`` needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UsageError
from .output import AtomicOutput

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EMBEDDING = "embedding"
ERROR = "error"


def output_format(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"{path}: unknown output type {suffix or '(none)'}; use .parquet, .npy or .jsonl")
    return FORMATS[suffix]


def ids_path(npy_path: str | os.PathLike[str]) -> Path:
    """vectors.npy keeps its row ids (and errors) beside it in vectors.ids.parquet."""
    p = Path(npy_path)
    return p.with_name(p.stem + ".ids.parquet")


def row_id(values: list[Any]) -> str:
    """One row's id values as a lookup key (JSON, so 7 and "7" stay different)."""
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def row_ids(ids: pd.DataFrame) -> list[str]:
    columns = [ids[c].tolist() for c in ids.columns]  # tolist(): numpy scalars become Python ones
    return [row_id(list(values)) for values in zip(*columns)]


class VectorWriter(Protocol):
    def write(self, ids: pd.DataFrame, vectors: np.ndarray, errors: list[str | None]) -> None: ...
    def close(self, complete: bool = True) -> None: ...


Inputs = Iterable[str | os.PathLike[str]]


def open_writer(path: str | os.PathLike[str], dim: int, rows: int, *, inputs: Inputs = ()) -> VectorWriter:
    """The writer for ``path``'s extension; ``inputs`` (the table read) may not be overwritten."""
    fmt = output_format(path)
    if fmt == "parquet":
        return ParquetVectors(path, dim, inputs=inputs)
    if fmt == "npy":
        return NpyVectors(path, dim, rows, inputs=inputs)
    return JsonlVectors(path, inputs=inputs)


def _cannot_write(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"{path}: cannot write the output: {exc.strerror or exc}")


class _ParquetFile:
    """Appends Arrow tables to ``<path>.part``; later tables are cast to the first one's schema."""

    def __init__(self, path: Path, inputs: Inputs = ()) -> None:
        self.path = path
        self.output = AtomicOutput(path, inputs=inputs)
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.output.path_for_writing, table.schema, compression="zstd")
        elif table.schema != self._schema:
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UsageError(f"{self.path}: an id column changes type mid-file ({exc}); "
                                 "give --id-column a column of one type") from None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, complete: bool, empty_schema: pa.Schema) -> None:
        try:
            if self._writer is None and complete:
                self._writer = pq.ParquetWriter(self.output.path_for_writing, empty_schema)
            if self._writer is not None:
                self._writer.close()
            self.output.finish(complete, rows=self.rows)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        finally:
            self.output.abort(rows=self.rows)  # a no-op once finished


def _ids_table(ids: pd.DataFrame, errors: list[str | None]) -> pa.Table:
    table = pa.Table.from_pandas(ids, preserve_index=False)
    return table.append_column(pa.field(ERROR, pa.string()), pa.array(errors, type=pa.string()))


class ParquetVectors:
    """ids..., embedding: fixed_size_list<float32>[dim] (null on error rows), error: string."""

    def __init__(self, path: str | os.PathLike[str], dim: int, *, inputs: Inputs = ()) -> None:
        self.dim = dim
        self._file = _ParquetFile(Path(path), inputs)

    def write(self, ids: pd.DataFrame, vectors: np.ndarray, errors: list[str | None]) -> None:
        values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        mask = pa.array([e is not None for e in errors], type=pa.bool_())
        column = pa.FixedSizeListArray.from_arrays(values, self.dim, mask=mask)
        table = pa.Table.from_pandas(ids, preserve_index=False)
        table = table.append_column(pa.field(EMBEDDING, pa.list_(pa.float32(), self.dim)), column)
        self._file.write(table.append_column(pa.field(ERROR, pa.string()),
                                             pa.array(errors, type=pa.string())))

    def close(self, complete: bool = True) -> None:
        self._file.close(complete, pa.schema([(EMBEDDING, pa.list_(pa.float32(), self.dim)),
                                              (ERROR, pa.string())]))


class NpyVectors:
    """A (rows, dim) float32 array (NaN rows on errors), and the ids with errors in .ids.parquet.

    The array is a memory map of the file being written, so rows go straight to disk."""

    def __init__(self, path: str | os.PathLike[str], dim: int, rows: int, *, inputs: Inputs = ()) -> None:
        self.path = Path(path)
        self.output = AtomicOutput(self.path, inputs=inputs)
        if self.output.in_place:
            self.output.abort()
            raise UsageError(f"{self.path}: a .npy output is a memory map and must be a regular file; "
                             "write .parquet or .jsonl to a pipe or device")
        self._row = 0
        try:
            self._array: np.memmap | None = np.lib.format.open_memmap(
                self.output.path_for_writing, mode="w+", dtype="<f4", shape=(rows, dim))
            self._ids = _ParquetFile(ids_path(path), inputs)
        except BaseException as exc:
            self._array = None
            self.output.abort()
            if isinstance(exc, OSError):
                raise _cannot_write(self.path, exc) from None
            raise

    def write(self, ids: pd.DataFrame, vectors: np.ndarray, errors: list[str | None]) -> None:
        assert self._array is not None
        self._array[self._row:self._row + len(vectors)] = vectors
        self._row += len(vectors)
        self._ids.write(_ids_table(ids, errors))

    def close(self, complete: bool = True) -> None:
        try:
            if self._array is not None:
                self._array.flush()
                self._array = None  # unmap before the rename
            self._ids.close(complete, pa.schema([(ERROR, pa.string())]))
            self.output.finish(complete, rows=self._row)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        finally:
            self.output.abort(rows=self._row)  # a no-op once finished


class JsonlVectors:
    """One object per row: the ids, "embedding" (a list, or null) and "error"."""

    def __init__(self, path: str | os.PathLike[str], *, inputs: Inputs = ()) -> None:
        self.path = Path(path)
        self.output = AtomicOutput(self.path, inputs=inputs)
        self.rows = 0
        try:
            self._file = self.output.open("wb")
        except OSError as exc:
            self.output.abort()
            raise _cannot_write(self.path, exc) from None

    def write(self, ids: pd.DataFrame, vectors: np.ndarray, errors: list[str | None]) -> None:
        names = list(ids.columns)
        columns = [ids[c].tolist() for c in names]
        lines = []
        for i, values in enumerate(zip(*columns) if names else ((),) * len(vectors)):
            record: dict[str, Any] = dict(zip(names, values))
            record[EMBEDDING] = vectors[i] if errors[i] is None else None
            record[ERROR] = errors[i]
            lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
        if lines:
            self._file.write(b"\n".join(lines) + b"\n")
            self.rows += len(lines)

    def close(self, complete: bool = True) -> None:
        try:
            self._file.close()
            self.output.finish(complete, rows=self.rows)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        finally:
            self.output.abort(rows=self.rows)  # a no-op once finished


# -- reading an earlier output -----------------------------------------------------------------------

def read_prior(path: str | os.PathLike[str], id_columns: list[str]) -> Iterator[tuple[str, bytes]]:
    """(row id, float32 bytes) for every row of an earlier output that has a vector."""
    fmt = output_format(path)
    if fmt == "parquet":
        yield from _prior_parquet(Path(path), id_columns)
    elif fmt == "npy":
        yield from _prior_npy(Path(path), id_columns)
    else:
        yield from _prior_jsonl(Path(path), id_columns)


def _check_ids(path: Path, names: list[str], id_columns: list[str]) -> None:
    missing = [c for c in id_columns if c not in names]
    if missing:
        raise UsageError(f"{path}: --skip-existing needs the id column(s) {', '.join(missing)}, "
                         f"which this file lacks (it has {', '.join(names) or 'none'})")


def _prior_parquet(path: Path, id_columns: list[str]) -> Iterator[tuple[str, bytes]]:
    file = pq.ParquetFile(path)
    _check_ids(path, file.schema_arrow.names, [*id_columns, EMBEDDING])
    for batch in file.iter_batches(batch_size=4096, columns=[*id_columns, EMBEDDING]):
        ids = [batch.column(c).to_pylist() for c in id_columns]
        vectors = batch.column(EMBEDDING)
        for i, values in enumerate(zip(*ids)):
            if vectors[i].is_valid:
                yield row_id(list(values)), np.asarray(vectors[i].values, dtype="<f4").tobytes()


def _prior_npy(path: Path, id_columns: list[str]) -> Iterator[tuple[str, bytes]]:
    array = np.load(path, mmap_mode="r")
    table = pq.read_table(ids_path(path))
    _check_ids(ids_path(path), table.column_names, id_columns)
    ids = [table.column(c).to_pylist() for c in id_columns]
    errors = table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * len(array)
    for i, values in enumerate(zip(*ids)):
        if errors[i] is None:
            yield row_id(list(values)), np.asarray(array[i], dtype="<f4").tobytes()


def _prior_jsonl(path: Path, id_columns: list[str]) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise UsageError(f"{path}:{number}: not JSON; cannot read it for --skip-existing") from None
            vector = record.get(EMBEDDING)
            if vector:
                _check_ids(path, list(record), id_columns)
                yield row_id([record[c] for c in id_columns]), np.asarray(vector, dtype="<f4").tobytes()
