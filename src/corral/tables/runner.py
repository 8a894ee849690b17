"""Tables through the engine: rows become requests, outcomes become columns, chunk by chunk.

A table job reads chunks lazily, asks the engine for one request per row (split mode: any model of
the group answers; fan-out: one request per model), and rebuilds each chunk with its new columns as
soon as the chunk's last outcome arrives. The engine delivers outcomes in input order, so only the
chunks being worked on are in memory, never the table. A chunk's requests are built one row at a
time as the engine reads them, and an answered row keeps only its `Answer`, not the request and
reply it came with: analyze asks about every row, and a chunk of 20,000 full outcomes and another
of 20,000 requests made peak memory grow with the job (1.44x from 10,000 to 1,000,000 rows).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..backends import Reply
from ..errors import UsageError
from ..requests import Request, build_messages, canonical_options, model_group
from ..results import Outcome
from .answer_types import typed_column
from .answers import AnswerCheck

log = logging.getLogger("corral")

#: Chunks a table job holds at most while their answers come back (the one being written and the
#: one being read), whatever share of rows is sent: a fill with 2% of rows to ask would otherwise
#: read chunks far ahead of the oldest unanswered one.
MAX_PENDING_CHUNKS = 2
#: Rows of a chunk turned into Python values at a time, as the engine reads them.
ROWS_BOXED = 2048


@dataclass(slots=True)
class RowPlan:
    """What to ask about one row."""

    prompt: str
    keys: tuple[str, ...] | None = None
    schema: dict[str, Any] | None = None
    model_class: Any = None


@dataclass(slots=True)
class Answer:
    """What a chunk keeps of one outcome until the chunk is written: the columns' inputs only
    (an `Outcome` holds its request, messages and the server's raw reply too)."""

    text: str | None
    error: str | None   # None when the outcome was ok
    model: str

    @classmethod
    def of(cls, outcome: Outcome) -> Answer:
        return cls(outcome.text, None if outcome.ok else (outcome.error or "failed"), outcome.request.model)


@dataclass(slots=True)
class RowResult:
    """What came back for one row: its answer (split mode) or an answer per model (fan-out), or
    why the row was not sent. One `Answer` is kept bare, not in a dict: a chunk holds thousands."""

    plan: RowPlan | None
    skipped: str | None = None
    answers: Answer | dict[str, Answer] | None = None

    def answer(self, name: str) -> Answer | None:
        """The answer of model ``name`` (``"*"`` in split mode)."""
        if isinstance(self.answers, dict):
            return self.answers.get(name)
        return self.answers if name == "*" else None


@dataclass(slots=True)
class _Chunk:
    frame: pd.DataFrame
    results: list[RowResult] = field(default_factory=list)
    expected: int | None = None   # known once every row of the chunk has been handed out
    received: int = 0

    def done(self) -> bool:
        return self.expected is not None and self.received >= self.expected


def parse_outcome(answer: Answer | None, plan: RowPlan | None) -> tuple[dict[str, Any], str | None, str | None]:
    """(values by key, error, raw text) for one answer; errors always carry a reason."""
    if answer is None:
        return {}, None, None
    text = answer.text
    if answer.error is not None:
        return {}, answer.error, text
    if plan is None or plan.keys is None:
        return {}, None, text
    values, problem = AnswerCheck(plan.keys, plan.schema, plan.model_class).parse(text)
    return (values or {}), problem, text


class TableRunner:
    """Turns chunks into requests and outcomes back into chunks; a sink for the engine."""

    def __init__(self, *, models: tuple[str, ...], fanout: bool, system: str | None,
                 options: dict[str, Any], plan: Callable[[dict[str, Any]], RowPlan | str],
                 finish: Callable[[pd.DataFrame, list[RowResult]], pd.DataFrame],
                 emit: Callable[[pd.DataFrame], None], id_column: str | None = None) -> None:
        self.models = models
        self.fanout = fanout
        self.system = system
        self.options = canonical_options(options)
        self.plan = plan
        self.finish = finish
        self.emit = emit
        self.id_column = id_column
        self.skipped: list[str] = []   # the first 1,000 reasons; skipped_count counts them all
        self.skipped_count = 0
        self.rows_read = 0         # rows planned so far
        self.requests_planned = 0  # requests made for the rows read so far
        self._pending: deque[_Chunk] = deque()
        self._mid_chunk = False   # requests of the last chunk read are still being handed out
        self._checks: dict[tuple[Any, ...], AnswerCheck] = {}

    # -- the request side ---------------------------------------------------------------------------
    def requests(self, chunks: Iterable[pd.DataFrame]) -> Iterator[Request]:
        lanes = self.models if self.fanout else (model_group(self.models),)
        for frame in chunks:
            frame = frame.reset_index(drop=True)
            chunk = _Chunk(frame)
            results = chunk.results
            self._pending.append(chunk)
            self._mid_chunk = True
            sent = 0
            held: Request | None = None  # handed out one behind, so the chunk's last is known as such
            for row in self._rows(frame):
                self.rows_read += 1
                planned = self.plan(row)
                if isinstance(planned, str):
                    results.append(RowResult(plan=None, skipped=planned))
                    if planned != "nothing missing":
                        self.skipped_count += 1
                        if len(self.skipped) < 1000:
                            self.skipped.append(f"row {self.rows_read}: {planned}")
                    continue
                results.append(RowResult(plan=planned))
                row_id = str(row.get(self.id_column)) if self.id_column else str(self.rows_read)
                for model in lanes:
                    request = self._request(planned, model, row_id, len(results) - 1)
                    self.requests_planned += 1
                    sent += 1
                    if held is not None:
                        yield held
                    held = request
                planned.prompt = ""  # its requests carry it; the row keeps only what reads the answer
            self._mid_chunk = False
            chunk.expected = sent
            self._drain()
            if held is not None:
                yield held

    def _rows(self, frame: pd.DataFrame) -> Iterable[dict[str, Any]]:
        """The chunk's rows as dicts of the columns the plan reads (all, if it does not say): a
        re-run spends most of its time here otherwise, boxing every cell of every column."""
        for start in range(0, len(frame), ROWS_BOXED):  # a slice at a time: requests are built lazily
            yield from self._boxed(frame.iloc[start:start + ROWS_BOXED])

    def _boxed(self, frame: pd.DataFrame) -> Iterable[dict[str, Any]]:
        reads = getattr(self.plan, "reads", None)
        if reads is None:
            return frame.to_dict("records")  # type: ignore[no-any-return]
        if len(set(frame.columns)) != len(frame.columns):  # duplicate names: pandas' own way
            return frame.to_dict("records")  # type: ignore[no-any-return]
        labels = {str(c): c for c in frame.columns}  # plans name columns as text
        names = [c for c in dict.fromkeys([*reads, *([self.id_column] if self.id_column else [])])
                 if c in labels]
        if not names:
            return ({} for _ in range(len(frame)))
        values = [frame[labels[name]].tolist() for name in names]
        return (dict(zip(names, row)) for row in zip(*values))

    def ready(self) -> bool:
        """Engine hook: may the next row be read? Not when the next read would be a new chunk
        while `MAX_PENDING_CHUNKS` wait for answers (a chunk's own requests are always handed out)."""
        return self._mid_chunk or len(self._pending) < MAX_PENDING_CHUNKS

    def _request(self, plan: RowPlan, model: str, row_id: str, position: int) -> Request:
        split = not self.fanout
        return Request(
            index=0, id=row_id, model=model,
            messages=build_messages(plan.prompt, self.system),
            options=dict(self.options), format=plan.schema,
            meta={"row": position, "plan": plan},
            model_choices=self.models if split else None,
        )

    def validate(self, request: Request, reply: Reply) -> str | None:
        """Engine hook: re-ask when a structured answer is not the JSON we asked for."""
        plan: RowPlan | None = request.meta.get("plan")
        if plan is None or plan.keys is None:
            return None
        key = (plan.keys, plan.model_class)
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = AnswerCheck(plan.keys, plan.schema, plan.model_class)
        return check.problem(reply.text)

    # -- the outcome side (the engine's sink) ------------------------------------------------------
    def write(self, outcome: Outcome) -> None:
        chunk = self._pending[0]
        result = chunk.results[outcome.request.meta["row"]]
        if self.fanout:
            if not isinstance(result.answers, dict):
                result.answers = {}
            result.answers[outcome.request.model] = Answer.of(outcome)
        else:
            result.answers = Answer.of(outcome)
        chunk.received += 1
        self._drain()

    def _drain(self) -> None:
        while self._pending and self._pending[0].done():
            chunk = self._pending.popleft()
            self.emit(self.finish(chunk.frame, chunk.results))

    def close(self, complete: bool = True) -> None:
        if complete:
            self._drain()


def split_columns(keys: tuple[str, ...] | None) -> list[str]:
    return ["response", *(keys or ()), "model", "error"]


def answer_column_names(models: tuple[str, ...], fanout: bool, keys: tuple[str, ...] | None,
                        prefix: str = "") -> list[str]:
    """The columns an analysis adds, in order: ``response``, the keys, ``model``, ``error`` (split
    mode), or ``response_<model>``, ``<key>_<model>``, ``error_<model>`` per model (fan-out,
    Ollama-run-async's names); each behind ``prefix``."""
    if not fanout:
        return [prefix + name for name in split_columns(keys)]
    return [f"{prefix}{name}_{model}" for model in models
            for name in ("response", *(keys or ()), "error")]


def refuse_clashes(existing: list[str], new: list[str], *, option: str, example: str) -> None:
    """UsageError naming the input columns that new columns would overwrite, and the way out.

    Input data is never overwritten: in the case that made this rule, the lost values were a
    study's gold labels, in a column named like the JSON key asked for."""
    have = set(existing)
    clashes = list(dict.fromkeys(name for name in new if name in have))
    if clashes:
        names = ", ".join(repr(c) for c in clashes)
        raise UsageError(f"the table already has column(s) {names}, which the answers would "
                         f"overwrite; keep both with {option} (e.g. {example}), or rename the "
                         "column(s)")


def add_answer_columns(frame: pd.DataFrame, results: list[RowResult], models: tuple[str, ...],
                       fanout: bool, keys: tuple[str, ...] | None, prefix: str = "",
                       types: dict[str, str] | None = None) -> pd.DataFrame:
    """run_analysis's columns: response/keys/model/error, or each suffixed _<model> in fan-out;
    every name behind ``prefix``; a key with a JSON type (``types``) gets that type's dtype."""
    out = frame.copy()
    key_list = list(keys or ())
    types = types or {}
    if fanout:
        for model in models:
            columns = _columns_for(results, model, key_list)
            out[f"{prefix}response_{model}"] = columns["response"]
            for key in key_list:
                out[f"{prefix}{key}_{model}"] = typed_column(columns[key], types.get(key))
            out[f"{prefix}error_{model}"] = columns["error"]
    else:
        columns = _columns_for(results, "*", key_list)
        out[f"{prefix}response"] = columns["response"]
        for key in key_list:
            out[prefix + key] = typed_column(columns[key], types.get(key))
        out[f"{prefix}model"] = columns["model"]
        out[f"{prefix}error"] = columns["error"]
    return out


def _columns_for(results: list[RowResult], name: str, keys: list[str]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {c: [] for c in ("response", "model", "error", *keys)}
    for result in results:
        answer = result.answer(name)
        values, error, text = parse_outcome(answer, result.plan)
        if result.skipped:
            error = f"not sent: {result.skipped}"
        columns["response"].append(text)
        columns["model"].append(answer.model if answer else None)
        columns["error"].append(error)
        for key in keys:
            columns[key].append(values.get(key) if error is None else None)
    return columns
