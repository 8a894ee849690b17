"""The fronts of embedding: `embed` (texts in, a numpy array out) and `embed_file` (table in, vectors out).

Both run the same two passes (see ``job.py``) over the same engine as every other corral job; the CLI's
``corral embed`` is a thin layer over `embed_file_async`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ServerSpec
from ..engine import Engine, EngineSettings
from ..errors import CorralError, UsageError
from ..manifest import ManifestRecorder, data_facts, file_facts, manifest_path
from ..options import checked_keywords
from ..runner import RunRecord, run_job
from ..runtime import run_sync
from ..settings import ConfigLike, ServerLike, resolve
from ..store import Store
from .job import DEFAULT_BATCH_SIZE, EmbedCounts, Embedder, EmbedSpec, Row
from .vectors import VectorCache

#: How many failed rows a result keeps for the report (the output file has them all).
KEEP_ERRORS = 1000


class EmbedError(CorralError):
    """Some texts got no vector. ``vectors`` has NaN rows for them, ``errors`` says why (by position)."""

    def __init__(self, message: str, vectors: np.ndarray, errors: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.vectors = vectors
        self.errors = errors


@dataclass(slots=True)
class EmbedReport:
    """What `embed_file` did: counts, the output, and the first failed rows (id, error)."""

    counts: EmbedCounts
    output: Path
    store: Path | None
    errors: list[tuple[str, str]] = field(default_factory=list)
    failed_rows: int = 0     # rows of the output without a vector
    unreachable: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    """Where and how: the parts of a call that are not the texts."""

    specs: list[ServerSpec]
    spec: EmbedSpec
    settings: EngineSettings
    retry_failed: bool = False
    progress: str = "none"
    argv: list[str] | None = None


def _job(model: str | None, servers: Any, config: ConfigLike | None, api: str, batch_size: int,
         truncate: bool | None, dimensions: int | None, keep_alive: str | int | None,
         options: dict[str, Any] | None, concurrency: int | None, timeout: float | None,
         retry_failed: bool, progress: bool | str, argv: list[str] | None, *, local: bool = False,
         stack: ExitStack | None = None, extra_options: dict[str, Any] | None = None) -> _Job:
    resolved = resolve(servers=servers, config=config, api=api, local=local, local_embedding=True,
                       stack=stack, model=model, options=options, extra_options=extra_options,
                       keep_alive=keep_alive, timeout=timeout)
    spec = EmbedSpec(
        # the local server answers to its own alias only
        model=resolved.local_model or resolved.model or "", batch_size=batch_size, truncate=truncate,
        dimensions=dimensions, keep_alive=resolved.keep_alive, options=resolved.options,
    )
    settings = resolved.engine_settings(concurrency=concurrency, journal=False)
    mode = progress if isinstance(progress, str) else ("auto" if progress else "none")
    return _Job(resolved.servers, spec, settings, retry_failed, mode, argv)


def _recorder(job: _Job, input_facts: dict[str, Any], path: Path | None,
              output: dict[str, Any]) -> ManifestRecorder:
    spec = job.spec
    return ManifestRecorder(
        kind="embed", path=path, argv=job.argv, input=input_facts, output=output,
        job={"model": spec.model, "models": [spec.model], "endpoint": "embed",
             "batch_size": spec.batch_size, "truncate": spec.truncate, "dimensions": spec.dimensions,
             "keep_alive": spec.keep_alive, "options": spec.options, "retry_failed": job.retry_failed},
    )


async def _send(job: _Job, cache: VectorCache, journal: Store, rows: Iterable[Row], *,
                total: int | None, use_prior: bool, manifest: ManifestRecorder | None
                ) -> tuple[Embedder, Engine]:
    """Pass one, through the one runner: embed every text the store lacks. The run counts texts,
    not the engine's batches, in its progress line, its run record and its manifest."""
    embedders: list[Embedder] = []

    async def work(engine: Engine) -> None:
        embedder = Embedder(engine, cache, job.spec, retry_failed=job.retry_failed, use_prior=use_prior)
        embedders.append(embedder)
        await embedder.send(rows)

    def counts() -> EmbedCounts:
        return embedders[0].counts if embedders else EmbedCounts()

    def counter() -> tuple[int, int | None, str]:
        c = counts()
        rate = c.embedded / c.seconds if c.seconds > 0 else 0.0
        return c.done, total, (f"{c.failed} failed · {c.cached} cached · "
                               f"{c.deduplicated} duplicates · {rate:.1f} texts/s")

    record = RunRecord(info={"job": "embed", "model": job.spec.model}, counts=lambda: counts().as_dict())
    try:
        engine = await run_job(work, servers=job.specs, store=journal, settings=job.settings,
                               models=[job.spec.model], progress=job.progress, counter=counter,
                               argv=job.argv, manifest=manifest, record=record)
    finally:
        if manifest is not None and embedders:
            c = counts()
            manifest.update(counts={"total": c.rows, **c.as_dict()},
                            embedding={"dim": c.dim, "dtype": "float32"})
    return embedders[0], engine


# -- texts in, array out --------------------------------------------------------------------------

@checked_keywords()
async def embed_async(
    texts: Iterable[str],
    model: str | None = None,
    *,
    servers: ServerLike | Sequence[ServerLike] | None = None,
    config: ConfigLike | None = None,
    local: bool = False,
    api: str = "ollama",
    batch_size: int = DEFAULT_BATCH_SIZE,
    truncate: bool | None = None,
    dimensions: int | None = None,
    keep_alive: str | int | None = None,
    options: dict[str, Any] | None = None,
    extra_options: dict[str, Any] | None = None,
    store: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    retry_failed: bool = False,
    on_error: str = "raise",
    progress: bool | str = False,
    manifest: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The async twin of `embed`."""
    if isinstance(texts, (str, bytes)):
        raise UsageError("embed() takes a list of texts; for one text write embed([text], ...)")
    if on_error not in ("raise", "nan"):
        raise UsageError(f"on_error must be 'raise' or 'nan', not {on_error!r}")
    values = list(texts)
    stack = ExitStack()
    job = _job(model, servers, config, api, batch_size, truncate, dimensions, keep_alive, options,
               concurrency, timeout, retry_failed, progress, None, local=local, stack=stack,
               extra_options=extra_options)
    recorder = None
    if manifest is not None:
        facts = data_facts("texts", (str(v).encode("utf-8", "surrogatepass") + b"\x00" for v in values),
                           len(values))
        recorder = _recorder(job, facts, Path(manifest), {"path": None})
    with stack, Store(store) as journal, VectorCache(journal) as cache:
        embedder, _ = await _send(job, cache, journal, ((None, v) for v in values), total=len(values),
                                  use_prior=False, manifest=recorder)
        vectors, problems = embedder.vectors_for(values)
    failed = [(i, problem) for i, problem in enumerate(problems) if problem is not None]
    if failed and on_error == "raise":
        first = "; ".join(f"text {i}: {problem}" for i, problem in failed[:3])
        raise EmbedError(f"{len(failed)} of {len(values)} texts got no vector ({first}); "
                         "their rows are NaN in .vectors; pass on_error='nan' to get the array anyway",
                         vectors, failed[:KEEP_ERRORS])
    return vectors


@checked_keywords(embed_async)
def embed(texts: Iterable[str], model: str | None = None, **kwargs: Any) -> np.ndarray:
    """Embed texts on one or many servers; a float32 array of shape (len(texts), dim), input order.

    Texts are sent in batches of ``batch_size`` (Ollama's ``/api/embed``, OpenAI's
    ``/v1/embeddings``), spread over every server's slots, retried on failures; identical texts are
    embedded once. With ``store="vectors.db"`` every vector is kept as it arrives, so calling again
    after a crash (or with more texts) only sends what is missing. A text that cannot be embedded
    (blank, or too long for the model) raises `EmbedError` after the others are done, unless
    ``on_error="nan"``, which leaves its row NaN. ``manifest="run.json"`` writes the run's provenance
    (servers, model digests, options, counts) there. ``local=True`` (or ``servers="local"``) embeds
    with the bundled model. ``options={...}`` must be known model options (a typo is an error with a
    did-you-mean); ``extra_options={...}`` sends others as they are.

    >>> vecs = corral.embed(df["overview"], model="nomic-embed-text", servers=["gpu1:11434"])
    """
    return run_sync(embed_async(texts, model, **kwargs))


# -- a table in, a vector file out ----------------------------------------------------------------

@checked_keywords()
async def embed_file_async(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    text_column: str = "text",
    id_columns: Sequence[str] | None = None,
    model: str | None = None,
    servers: ServerLike | Sequence[ServerLike] | None = None,
    config: ConfigLike | None = None,
    local: bool = False,
    api: str = "ollama",
    batch_size: int = DEFAULT_BATCH_SIZE,
    truncate: bool | None = None,
    dimensions: int | None = None,
    keep_alive: str | int | None = None,
    options: dict[str, Any] | None = None,
    extra_options: dict[str, Any] | None = None,
    limit: int | None = None,
    skip_existing: bool = False,
    retry_failed: bool = False,
    store: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    chunk_size: int = 4096,
    progress: bool | str = False,
    argv: list[str] | None = None,
    encoding: str | None = None,
) -> EmbedReport:
    """The async twin of `embed_file` (``encoding``: a CSV or TSV input's, when not UTF-8)."""
    from ..jobs import default_store_path
    from ..sinks.output import check_not_input
    from ..sinks.vectors import open_writer, output_format, read_prior, row_ids
    from ..sources.tables import count_rows, read_table_chunks

    output_format(output)  # an unknown extension fails before any work
    check_not_input(output, [input])  # and so does writing onto the input
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be >= 0, not {limit}")
    header = list(next(iter(read_table_chunks(input, chunk_size=1, encoding=encoding))).columns)
    ids = list(dict.fromkeys(id_columns)) if id_columns else (["id"] if "id" in header else [])
    wanted = list(dict.fromkeys([text_column, *ids]))
    read_table_chunks(input, chunk_size=1, columns=wanted, encoding=encoding)  # a missing column fails here
    id_names = ids or ["row"]
    total = file_rows = count_rows(input, encoding=encoding)
    if limit is not None:
        total = min(total, limit) if total is not None else limit

    def table_rows() -> Iterator[tuple[Any, list[Any]]]:
        left = limit
        for chunk in read_table_chunks(input, chunk_size=chunk_size, columns=wanted, encoding=encoding):
            if left is not None:
                if left <= 0:
                    return
                chunk = chunk.iloc[:left]
                left -= len(chunk)
            frame = chunk[ids] if ids else chunk.index.to_frame(name="row", index=False)
            yield frame.reset_index(drop=True), chunk[text_column].tolist()

    store_path = Path(store) if store else default_store_path(str(output), None)
    stack = ExitStack()
    job = _job(model, servers, config, api, batch_size, truncate, dimensions, keep_alive, options,
               concurrency, timeout, retry_failed, progress, argv, local=local, stack=stack,
               extra_options=extra_options)
    report = EmbedReport(counts=EmbedCounts(), output=Path(output), store=store_path)
    with stack, Store(store_path) as journal, VectorCache(journal) as cache:
        use_prior = skip_existing and Path(output).exists() and cache.add_prior(
            read_prior(output, id_names)) > 0

        def rows() -> Iterator[Row]:
            for frame, values in table_rows():
                yield from zip(row_ids(frame) if use_prior else [None] * len(values), values)

        recorder = _recorder(job, file_facts(input, file_rows), manifest_path(output),
                             {"path": str(output), "text_column": text_column, "id_columns": id_names,
                              "limit": limit, "skip_existing": skip_existing})
        embedder, engine = await _send(job, cache, journal, rows(), total=total, use_prior=use_prior,
                                       manifest=recorder)
        report.counts = embedder.counts
        report.unreachable = engine.unreachable
        report.servers = [s.label for s in engine.servers]
        writer = open_writer(output, embedder.counts.dim or 0, embedder.counts.rows, inputs=(input,))
        complete = False
        try:
            for frame, values in table_rows():  # pass two: the same rows, vectors from the store
                vectors, problems = embedder.vectors_for(values, row_ids(frame) if use_prior else None)
                writer.write(frame, vectors, problems)
                failed = [i for i, problem in enumerate(problems) if problem is not None]
                report.failed_rows += len(failed)
                for i in failed[:max(0, KEEP_ERRORS - len(report.errors))]:
                    row = ", ".join(f"{c}={frame.at[i, c]}" for c in frame.columns)
                    report.errors.append((row, problems[i] or ""))
            complete = True
        finally:
            writer.close(complete=complete)
    return report


@checked_keywords(embed_file_async)
def embed_file(input: str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any) -> EmbedReport:
    """Embed one column of a table (CSV, TSV, Parquet, JSONL, Excel) into a vector file.

    The output keeps the input's id column(s) (``id_columns``; by default ``id`` when the table has
    one, else the row number as ``row``) and, by its extension: ``.parquet``, a fixed-size float32
    list column ``embedding`` plus ``error``; ``.npy``, a (rows, dim) float32 array with the ids in
    ``<name>.ids.parquet``; ``.jsonl``, one object per row. Rows keep input order. Vectors are kept in
    the store (``<output>.corral.db`` by default) as they arrive, so a re-run sends only what is
    missing; ``skip_existing=True`` also trusts the rows already in ``output``. The run's manifest
    goes to ``<output>.manifest.json``.
    """
    return run_sync(embed_file_async(input, output, **kwargs))
