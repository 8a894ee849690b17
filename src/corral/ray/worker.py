"""One corral engine per Ray actor, on its own event loop in a background thread.

The engine is started once (servers probed once, connections kept alive across batches) and runs
one batch at a time: ``Engine.run`` is called per batch, so retries, failover and hedging work as in
one process, within this actor's share of the slots. Answers are not journaled (``journal=False``):
an actor's unit of resume is the batch or partition Ray retries, and an in-memory journal would grow
with every row the actor ever saw.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .. import runtime
from ..config import ServerSpec
from ..engine import Engine, EngineSettings, JobStats, RetryPolicy
from ..settings import ConfigLike, Settings, resolve
from ..store import Store
from ..tables.analysis import build_runner
from ..tables.job import TableFileReport, Where, model_list, run_table_file, run_table_frame
from ..tables.runner import add_answer_columns
from .slots import fleet_slots, share_slots


@dataclass(slots=True)
class TableJob:
    """What every row is asked, as run_analysis's arguments (picklable: it travels to the actors)."""

    text_column: str = "text"
    model_names: tuple[str, ...] = ()
    prompt_template: str | None = None
    json_keys: Any = None
    json_schema: Any = None
    fanout: bool = False
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    id_column: str | None = None
    #: Put before every new column's name (``llm_`` → ``llm_response``), for tables whose own
    #: columns are named like the answers; a clash without it is refused before anything is sent.
    column_prefix: str = ""

    def runner(self, columns: list[str], emit: Any) -> Any:
        """The TableRunner asking this job of a table with ``columns``; filled chunks go to ``emit``."""
        return build_runner(
            columns, emit, text_column=self.text_column, models=model_list(self.model_names),
            fanout=self.fanout, prompt_template=self.prompt_template, json_keys=self.json_keys,
            json_schema=self.json_schema, system=self.system, options=self.options,
            id_column=self.id_column, column_prefix=self.column_prefix)


def resolve_fleet(config: ConfigLike | None, servers: Any, api: str, workers: int | None,
                  **explicit: Any) -> tuple[list[ServerSpec], Settings]:
    """The whole fleet with every server's slots known, and the job's settings (`corral.settings`;
    ``explicit`` are its keyword arguments: ``system``, ``options``, ``timeout``...)."""
    job = resolve(servers=servers or None, config=config, api=api, require_servers=True, **explicit)
    return fleet_slots(job.servers, workers), job


class ActorEngine:
    """An engine on a private event loop thread; ``run_frame`` is called from Ray's task thread."""

    def __init__(self, specs: list[ServerSpec], settings: EngineSettings) -> None:
        factory = runtime.loop_factory()
        self._loop = factory() if factory else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corral-ray-loop", daemon=True)
        self._thread.start()
        self._stopped = False
        self._lock = threading.Lock()
        self.engine = Engine(specs, Store(None), settings)
        try:
            self._call(self.engine.start())
        except BaseException:
            self._stop_loop()
            raise
        self.totals = JobStats()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run_frame(self, frame: pd.DataFrame, job: TableJob) -> pd.DataFrame:
        """``frame`` with run_analysis's columns filled; a failing row has its error filled."""
        models = model_list(job.model_names)

        def empty(head: pd.DataFrame, runner: Any) -> pd.DataFrame:
            return add_answer_columns(head, [], models, job.fanout, runner.plan.keys, job.column_prefix)

        out, _, _ = self._run(run_table_frame(
            frame.reset_index(drop=True), build=job.runner, describe=None, where=Where(engine=self.engine),
            per_row=len(models) if job.fanout else 1, store=self.engine.store, chunk_size=max(1, len(frame)),
            progress="none", empty=empty))
        return out

    def run_file(self, input: str, output: str, job: TableJob, chunks: Iterable[pd.DataFrame]) -> TableFileReport:
        """The table-file loop on this actor's engine: ``chunks`` of ``input`` in, ``output`` written
        whole or not at all."""
        return self._run(run_table_file(
            input, output, build=job.runner, describe=None, where=Where(engine=self.engine),
            store=self.engine.store, chunks=chunks, neutralize_formulas=False, progress="none"))

    def _run(self, coro: Any) -> Any:
        with self._lock:  # one batch at a time: Engine.run is not re-entrant
            before = self.engine.stats
            result = self._call(coro)
            stats = self.engine.stats
            if stats is not before:
                for name in ("done", "ok", "failed", "sent", "retries", "prompt_tokens", "completion_tokens"):
                    setattr(self.totals, name, getattr(self.totals, name) + getattr(stats, name))
            return result

    def close(self) -> None:
        try:
            self._call(self.engine.aclose(), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __del__(self) -> None:  # the actor is gone: close the servers' connections and the loop
        if not getattr(self, "_stopped", True):  # not when start() failed or close() already ran
            try:
                self.close()
            except Exception:
                pass


def actor_settings(timeout: float | None, max_attempts: int, max_json_retries: int) -> EngineSettings:
    """The engine's settings on an actor: fixed slots (a learnt extra slot would break the fleet's
    total), no journal (see the module doc)."""
    return EngineSettings(timeout=timeout, retry=RetryPolicy(max_attempts=max_attempts),
                          adaptive_slots=False, journal=False, content_retries=max_json_retries)


def my_share(specs: list[ServerSpec], num_actors: int, key: str) -> tuple[int, list[ServerSpec]]:
    """This actor's index (from the job's ledger) and its servers with their share of slots."""
    from .ledger import claim_index

    index = claim_index(key, num_actors)
    return index, share_slots(specs, num_actors, index)


def fleet_key(specs: list[ServerSpec], num_actors: int, extra: str = "") -> str:
    """Identifies a job's fleet and actor count: actors with the same key share one ledger."""
    return "|".join([*(f"{s.url}={s.max_concurrency}" for s in specs), str(num_actors), extra])
