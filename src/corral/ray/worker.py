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
from ..config import Config, ServerSpec, load_config, parse_config, server_from_url
from ..engine import Engine, EngineSettings, JobStats, RetryPolicy
from ..errors import UsageError
from ..store import Store
from ..tables.analysis import build_runner
from ..tables.execute import model_list
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

    def runner(self, columns: list[str], emit: Any) -> Any:
        """The TableRunner asking this job of a table with ``columns``; filled chunks go to ``emit``."""
        return build_runner(
            columns, emit, text_column=self.text_column, models=model_list(self.model_names),
            fanout=self.fanout, prompt_template=self.prompt_template, json_keys=self.json_keys,
            json_schema=self.json_schema, system=self.system, options=self.options,
            id_column=self.id_column)


def resolve_fleet(config: str | dict[str, Any] | Config | None, servers: Any, api: str,
                  workers: int | None) -> tuple[list[ServerSpec], Config]:
    """The whole fleet with every server's slots known, and the config's job settings."""
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = parse_config(config)
    elif config:
        cfg = load_config(config)
    else:
        cfg = Config()
    specs = list(cfg.servers)
    if servers:
        items = [servers] if isinstance(servers, (str, ServerSpec)) else list(servers)
        specs = [s if isinstance(s, ServerSpec) else server_from_url(s, api) for s in items]
    if not specs:
        raise UsageError("no servers: give config= (a cluster TOML path or dict) or servers=[URL, ...]")
    return fleet_slots(specs, workers), cfg


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
        frame = frame.reset_index(drop=True)
        models = model_list(job.model_names)
        parts: list[pd.DataFrame] = []
        runner = job.runner([str(c) for c in frame.columns], parts.append)
        self.run_chunks(runner, [frame], len(frame) * (len(models) if job.fanout else 1))
        if not parts:
            return add_answer_columns(frame.iloc[0:0], [], models, job.fanout,
                                      runner.plan.keys)  # type: ignore[attr-defined]
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)

    def run_chunks(self, runner: Any, chunks: Iterable[pd.DataFrame], total: int | None) -> JobStats:
        """Run a TableRunner's requests for ``chunks`` through this actor's engine; its chunks come
        back through the runner's ``emit`` as they complete."""
        with self._lock:  # one batch at a time: Engine.run is not re-entrant
            stats = self._call(self.engine.run(runner.requests(chunks), runner.write, total=total,
                                               validate=runner.validate))
            runner.close(complete=True)
            for name in ("done", "ok", "failed", "sent", "retries", "prompt_tokens", "completion_tokens"):
                setattr(self.totals, name, getattr(self.totals, name) + getattr(stats, name))
            return stats

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
