"""Embedding a corpus in two passes: send what the store lacks, then read every vector back in order.

Pass one streams the texts, drops the ones whose vector is already stored (or whose row is in an
earlier output), embeds each distinct text once, and sends the rest in batches of ``batch_size``
through the engine (slots, retries, failover). Every vector lands in the store's ``vectors`` table as
its batch arrives, so a killed run loses at most the batches in flight. A batch the server refuses as
a whole (one text too long) is cut in halves until the culprit stands alone: it gets the error, its
neighbours their vectors.

Pass two walks the same rows again and fetches each row's vector from the store, so the output is
written in input order with memory bounded by one chunk, whatever order the batches finished in.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..engine import Engine
from ..errors import UsageError
from ..requests import Request, canonical_options
from ..results import Outcome
from .vectors import VectorCache

#: Rows read, hashed and looked up in the store at a time.
READ_CHUNK = 1024
DEFAULT_BATCH_SIZE = 32
NOT_EMBEDDED = "not embedded (the run stopped before this row)"
# Statuses that say nothing about the texts (the server is busy or lacks the model): a smaller batch
# would fail the same way, so these are not split.
_NOT_THE_INPUT = frozenset({401, 403, 404, 408, 429, 502, 503, 504})


class DimensionError(UsageError):
    """Vectors of one job must all have the same length."""


@dataclass(frozen=True, slots=True)
class EmbedSpec:
    """What to ask for: the model and the options every batch carries."""

    model: str
    batch_size: int = DEFAULT_BATCH_SIZE
    truncate: bool | None = None          # Ollama: cut inputs at the context length (its default)
    dimensions: int | None = None         # Ollama and OpenAI: shorter (Matryoshka) vectors
    keep_alive: str | int | None = None   # Ollama: how long the model stays loaded
    options: dict[str, Any] = field(default_factory=dict)  # Ollama model options (num_ctx...)

    def __post_init__(self) -> None:
        if not self.model:
            raise UsageError("no model: give the embedding model, e.g. --model nomic-embed-text")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {self.batch_size}")
        if self.dimensions is not None and self.dimensions < 1:
            raise UsageError(f"dimensions must be at least 1, not {self.dimensions}")

    def extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.truncate is not None:
            extra["truncate"] = self.truncate
        if self.dimensions is not None:
            extra["dimensions"] = self.dimensions
        return extra


@dataclass(slots=True)
class EmbedCounts:
    """What happened to the rows of a job. ``failed`` counts rows that end with an error value."""

    rows: int = 0
    embedded: int = 0        # vectors computed in this run
    cached: int = 0          # vectors found in the store or an earlier output
    deduplicated: int = 0    # rows whose text is identical to another row's in this run
    failed: int = 0
    requests: int = 0        # batches sent, retries and halves included
    splits: int = 0          # batches cut in two to isolate a text the server refused
    dim: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def done(self) -> int:
        return self.embedded + self.cached + self.deduplicated + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "embedded": self.embedded, "cached": self.cached,
                "deduplicated": self.deduplicated, "failed": self.failed, "requests": self.requests,
                "splits": self.splits, "dim": self.dim, "seconds": round(self.seconds, 3)}


def text_problem(value: Any) -> str | None:
    """Why a cell cannot be embedded (missing or blank), or None. Blank texts are not sent."""
    if value is None or (isinstance(value, float) and value != value) or type(value).__name__ == "NAType":
        return "no text"
    if isinstance(value, str) and not value.strip():
        return "empty text"
    return None


class TextKeys:
    """Stable per-text keys: a hash of (backend kind, model, options, text).

    The prefix is hashed once and copied per text, so keying a million texts takes about a second.
    ``keep_alive`` is left out: it changes how long the model stays loaded, not the vector."""

    def __init__(self, kind: str, spec: EmbedSpec) -> None:
        prefix = orjson.dumps({"v": 1, "kind": kind, "model": spec.model, "extra": spec.extra(),
                               "options": spec.options}, option=orjson.OPT_SORT_KEYS)
        self._base = hashlib.blake2b(prefix + b"\x00", digest_size=16)

    def __call__(self, text: str) -> str:
        h = self._base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()


Row = tuple[str | None, Any]  # (row id for --skip-existing or None, the text cell)


class Embedder:
    """Pass one over an engine (``send``), pass two over the store (``vectors_for``)."""

    def __init__(self, engine: Engine, cache: VectorCache, spec: EmbedSpec, *,
                 retry_failed: bool = False, use_prior: bool = False) -> None:
        self.engine = engine
        self.cache = cache
        self.spec = spec
        self.retry_failed = retry_failed
        self.use_prior = use_prior
        self.key = TextKeys(engine.key_kind(spec.model), spec)
        # Read ahead a few batches per slot, not thousands: a batch holds batch_size texts.
        self.window = max(8, 4 * engine.total_slots)
        self.counts = EmbedCounts()
        self._dim_source = ""
        self._in_flight: set[str] = set()
        self._to_split: list[Request] = []
        self._options = canonical_options(spec.options)

    # -- pass one ---------------------------------------------------------------------------------
    async def send(self, rows: Iterable[Row]) -> EmbedCounts:
        """Embed every row's text the store lacks; return the counts (also live in ``counts``)."""
        self.counts.started = time.monotonic()
        await self.engine.run(self._batches(rows), self._on_outcome, window=self.window)
        while self._to_split:  # each round halves the refused batches; log2(batch_size) rounds at most
            halves = [half for request in self._to_split for half in self._halves(request)]
            self._to_split = []
            await self.engine.run(iter(halves), self._on_outcome, window=self.window)
        self.cache.flush()
        self.counts.finished = time.monotonic()
        return self.counts

    def _batches(self, rows: Iterable[Row]) -> Iterator[Request]:
        texts: list[str] = []
        keys: list[str] = []
        for chunk in _chunks(rows, READ_CHUNK):
            self.counts.rows += len(chunk)
            for key, text in self._to_send(chunk).items():
                self._in_flight.add(key)
                keys.append(key)
                texts.append(text)
                if len(texts) >= self.spec.batch_size:
                    yield self._request(texts, keys)
                    texts, keys = [], []
        if texts:
            yield self._request(texts, keys)

    def _to_send(self, chunk: list[Row]) -> dict[str, str]:
        """The distinct texts of a chunk that nobody has embedded yet, by key."""
        prior = self.cache.prior(rid for rid, _ in chunk if rid is not None) if self.use_prior else {}
        fresh: dict[str, str] = {}
        for row_id, value in chunk:
            if row_id is not None and row_id in prior:
                self._check_dim(len(prior[row_id]) // 4, "the existing output")
                self.counts.cached += 1
                continue
            if text_problem(value):
                self.counts.failed += 1
                continue
            text = value if isinstance(value, str) else str(value)
            key = self.key(text)
            if key in fresh or key in self._in_flight:
                self.counts.deduplicated += 1
                continue
            fresh[key] = text
        for key, stored in self.cache.lookup(fresh).items():
            if stored.ok:
                self._check_dim(stored.dim, "the store")
                self.counts.cached += 1
            elif self.retry_failed:
                continue
            else:
                self.counts.failed += 1
            del fresh[key]
        return fresh

    def _request(self, texts: list[str], keys: list[str]) -> Request:
        return Request(
            index=0, id="", model=self.spec.model, endpoint="embed", inputs=texts,
            options=self._options, keep_alive=self.spec.keep_alive, extra=self.spec.extra(),
            meta={"keys": keys}, key=hashlib.blake2b("".join(keys).encode(), digest_size=16).hexdigest(),
        )

    def _halves(self, request: Request) -> list[Request]:
        texts, keys = request.inputs or [], request.meta["keys"]
        middle = len(texts) // 2
        return [self._request(texts[:middle], keys[:middle]), self._request(texts[middle:], keys[middle:])]

    def _on_outcome(self, outcome: Outcome) -> None:
        keys: list[str] = outcome.request.meta["keys"]
        self.counts.requests += outcome.attempts if not outcome.cached else 0
        error, kind = outcome.error, outcome.error_kind
        if outcome.ok:
            matrix, error = _matrix(outcome.reply.embeddings if outcome.reply else None, len(keys))
            if matrix is not None:
                self._check_dim(matrix.shape[1], f"server {outcome.server}")
                for key, vector in zip(keys, matrix):
                    self.cache.put(key, vector, outcome.server)
                self.counts.embedded += len(keys)
                self._in_flight.difference_update(keys)
                self.cache.flush()
                return
            kind = "protocol"
        if len(keys) > 1 and _worth_splitting(outcome):
            self._to_split.append(outcome.request)
            self.counts.splits += 1
            return
        for key in keys:
            self.cache.put_failed(key, error or "failed", kind, outcome.server)
        self.counts.failed += len(keys)
        self._in_flight.difference_update(keys)
        self.cache.flush()

    def _check_dim(self, dim: int | None, source: str) -> None:
        if dim is None:
            return
        if self.counts.dim is None:
            self.counts.dim, self._dim_source = dim, source
        elif dim != self.counts.dim:
            raise DimensionError(
                f"{self.spec.model}: {source} gave {dim}-dimensional vectors, but {self._dim_source} "
                f"gave {self.counts.dim}-dimensional ones; are different models answering to this name? "
                "(vectors of one job must all have one length; use another --store to start afresh)")

    # -- pass two ---------------------------------------------------------------------------------
    def vectors_for(self, values: Sequence[Any], row_ids: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, list[str | None]]:
        """The vectors of these rows from the store (NaN rows where there is none) and the errors."""
        n = len(values)
        errors: list[str | None] = [None] * n
        keys: list[str | None] = [None] * n
        prior = self.cache.prior(row_ids) if self.use_prior and row_ids is not None else {}
        for i, value in enumerate(values):
            if row_ids is not None and row_ids[i] in prior:
                continue
            problem = text_problem(value)
            if problem:
                errors[i] = problem
            else:
                keys[i] = self.key(value if isinstance(value, str) else str(value))
        stored = self.cache.lookup(k for k in keys if k is not None)
        dim = self.counts.dim or 0
        out = np.full((n, dim), np.nan, dtype=np.float32)
        for i in range(n):
            key = keys[i]
            if key is None:
                if errors[i] is None:  # from the earlier output
                    out[i] = self._fit(np.frombuffer(prior[row_ids[i]], "<f4"), "the existing output")  # type: ignore[index]
                continue
            row = stored.get(key)
            if row is None:
                errors[i] = NOT_EMBEDDED
            elif row.ok and row.vector is not None:
                out[i] = self._fit(np.frombuffer(row.vector, "<f4"), "the store")
            else:
                errors[i] = row.error or "failed"
        return out, errors

    def _fit(self, vector: np.ndarray, source: str) -> np.ndarray:
        if vector.shape[0] != (self.counts.dim or 0):
            self._check_dim(vector.shape[0], source)
        return vector


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _matrix(embeddings: Any, expected: int) -> tuple[np.ndarray | None, str | None]:
    """The answer as a (texts, dim) float32 matrix, or why it is not one."""
    if not isinstance(embeddings, list) or len(embeddings) != expected:
        got = len(embeddings) if isinstance(embeddings, list) else "no"
        return None, f"the server returned {got} vectors for {expected} texts"
    try:
        matrix = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError):
        return None, "the server returned vectors of different lengths in one answer"
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        return None, "the server returned empty vectors"
    return matrix, None


def _worth_splitting(outcome: Outcome) -> bool:
    """Could one text of the batch be to blame? Yes for "too long" and other refusals of the input,
    and for an answer that does not fit the batch; not for a server that is down, busy or lacks the
    model (those come without a status, or with one in _NOT_THE_INPUT or 5xx)."""
    if outcome.error_kind == "too_long":
        return True
    if outcome.status_code is None:
        return outcome.error_kind == "protocol"
    return outcome.status_code < 500 and outcome.status_code not in _NOT_THE_INPUT
