"""`corral run --auto-tune`: a short sweep per server on the job's own first rows, then the job.

Why on the job's own rows, with the job's own options: the sweep's answers are journaled like any
other (they are real answers to real rows), so the job then takes them from the store and nothing
the sweep did is thrown away; the only cost of tuning is the time spent at levels below the best.

Why so few levels, from the top down: every row answered at a level slower than the best costs
time, and a job of a few dozen rows cannot afford a sweep from 1 (on the embedded llama.cpp server,
1 in flight gives a third to a half of the throughput of 8). So each server is tried at all, half
and a quarter of its starting slots (configured ``max_concurrency``, or the protocol default),
going down only while the lower level stays within ``tolerance`` of the best; a llama.cpp server
says how many slots it has (/props), and more requests in flight than that only queue inside it, so
it is tried at all, three quarters and half of them. The top level runs two waves of rows when the budget allows,
each lower level one. Each server then starts the job at its knee (the smallest level within
``tolerance`` of the best), and the engine's own slot learning (`SlotControl`: more slots kept
only while they pay, halved on 503/429) carries on from there during the job.

Why a 2% tolerance here (`corral bench` uses 3% for the knee it writes): a level measured by one
wave of rows is noisy by a few percent, and a job started below its best level loses that share for
its whole length (measured: a 5% tolerance let a one-wave reading of 6 in flight, 4% under 8, pick
6 for a job that then ran 10% slower than at 8). Erring upwards costs latency, not throughput.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import ServerSpec
from ..engine import Engine, EngineSettings
from ..jobs import run_prompt_file
from ..requests import Request, request_key
from ..runner import JobResult, run_job
from ..sources import PromptFile
from ..store import Store
from .sweep import Sweep, run_level

TUNE_TOLERANCE = 0.02   # a lower level must measure within 2% of the best to be picked (see below)
TUNE_SHARE = 0.4        # at most this share of the job's rows goes to the sweep
MIN_ROWS_PER_SERVER = 6


@dataclass
class TuneResult:
    sweeps: list[Sweep] = field(default_factory=list)
    knees: dict[str, int] = field(default_factory=dict)   # server label -> slots chosen
    notes: list[str] = field(default_factory=list)
    rows: int = 0                                        # rows the sweep answered (kept)
    seconds: float = 0.0

    def apply(self, specs: list[ServerSpec]) -> list[ServerSpec]:
        """The servers with ``max_concurrency`` set to each one's knee (others unchanged)."""
        return [dataclasses.replace(s, max_concurrency=self.knees[s.label]) if s.label in self.knees else s
                for s in specs]

    def lines(self) -> list[str]:
        out = []
        for sweep in self.sweeps:
            tried = ", ".join(f"{lv.concurrency}: {sweep.throughput(lv):.1f}" for lv in sweep.levels)
            unit = "tok/s" if sweep.by_tokens else "req/s"
            picked = self.knees.get(sweep.server)
            out.append(f"{sweep.server}: {picked} in flight (swept {tried} {unit})" if picked else
                       f"{sweep.server}: no measurement; default slots kept")
        if self.sweeps:
            out.append(f"the sweep took {self.seconds:.1f}s; its {self.rows} answers are kept "
                       "(the job takes them from the store)")
        return out + self.notes


def tune_levels(start: int, server_slots: int | None) -> list[int]:
    """The levels to try, from the top down.

    A llama.cpp server: all, three quarters and half of its slots (8 -> [8, 6, 4]); at or below its
    slots every request of a wave runs at once, so one wave measures a level well, and small steps
    make each probe below the knee cheap. Otherwise all, half and a quarter of the starting slots
    (16 -> [16, 8, 4]): with the server's slots unknown, a level that is not a multiple of them
    finishes a wave in a ragged last batch and looks slower than it is, and powers of two match the
    usual slot counts (Ollama's OLLAMA_NUM_PARALLEL, vLLM's batch sizes)."""
    if server_slots is not None:
        levels = [server_slots, (3 * server_slots) // 4, server_slots // 2]
    else:
        levels = [start, start // 2, start // 4]
    return sorted({max(1, level) for level in levels}, reverse=True)


async def starting_slots(specs: list[ServerSpec], settings: EngineSettings, store: Store,
                         models: set[str]) -> dict[str, tuple[list[int], set[str]]]:
    """Per reachable server, from the engine's own probe: the levels to try, and which of
    ``models`` it has (a sweep must send a server only rows it can answer)."""
    found: dict[str, tuple[list[int], set[str]]] = {}

    async def look(engine: Engine) -> None:
        found.update({s.label: (tune_levels(s.slots, None if s.spec.max_concurrency else s.info.slots),
                                {m for m in models if engine.serves(s, m)}) for s in engine.servers})

    await run_job(look, servers=specs, store=store, settings=dataclasses.replace(settings, concurrency=None),
                  gpu_monitor=False, track=False)
    return found


async def tune_server(spec: ServerSpec, rows: list[Request], levels: list[int], store: Store,
                      timeout: float | None, tolerance: float) -> Sweep:
    """From the top level down, while a level stays within ``tolerance`` of the best so far.

    The top level gets two waves when the rows allow (it is the reference, and the cheapest: the
    fastest level is the one that costs nothing); each level below gets one wave, because every row
    answered there may be answered slower than the job would have been."""
    sweep = Sweep(server=spec.label, model=rows[0].model if rows else "", spec=spec, tolerance=tolerance)
    used = 0
    for position, level in enumerate(levels):
        count = level * (2 if position == 0 and 2 * level + sum(levels[1:]) <= len(rows) else 1)
        if len(rows) - used < count:
            break
        batch = rows[used:used + count]
        used += count
        result = await run_level(spec, batch, level, store=store, timeout=timeout, journal=True)
        sweep.levels.append(result)
        best = sweep.best
        if best is not None and sweep.throughput(result) < (1 - tolerance) * sweep.throughput(best):
            break  # clearly slower with fewer in flight: the knee is above, lower levels are slower still
    return sweep


def unanswered(rows: list[Request], store: Store, kind: str) -> list[Request]:
    """The rows the store has no answer for, keyed as the job will key them (so the sweep's answers
    are found by the job; on a fleet mixing Ollama and OpenAI servers a model on only some of them
    is keyed differently by the job, which then simply asks again)."""
    for request in rows:
        if not request.key:
            request.key = request_key(request, kind)
    stored = store.lookup(r.key for r in rows)  # failed ones too: the job keeps those unless --retry-failed
    seen: set[str] = set()
    fresh = []
    for request in rows:
        if request.key in stored or request.key in seen:
            continue
        seen.add(request.key)
        fresh.append(request)
    return fresh


async def auto_tune(specs: list[ServerSpec], rows: list[Request], store: Store,
                    settings: EngineSettings, *, tolerance: float = TUNE_TOLERANCE,
                    total_rows: int | None = None) -> TuneResult:
    """Sweep every server on its own slice of ``rows`` (the job's first rows), side by side."""
    result = TuneResult()
    if settings.concurrency:
        result.notes.append("--concurrency fixes the slots; nothing to tune")
        return result
    rows = [r for r in rows if not r.model_choices]  # split mode: the slot picks the model
    starts = await starting_slots(specs, settings, store, {r.model for r in rows})
    live = [s for s in specs if s.label in starts]
    total = total_rows if total_rows is not None else len(rows)
    budget = min(len(rows), int(total * TUNE_SHARE))
    if budget // max(1, len(live)) < MIN_ROWS_PER_SERVER:
        result.notes.append(f"the job is too small to tune ({total} rows); default slots kept")
        return result
    rows = unanswered(rows, store, "+".join(sorted({s.api for s in live})))[:budget]
    # Deal the rows out: each server gets its share, of models it has.
    slices: dict[str, list[Request]] = {s.label: [] for s in live}
    share = len(rows) // max(1, len(live))
    for request in rows:
        for spec in live:
            if request.model in starts[spec.label][1] and len(slices[spec.label]) < share:
                slices[spec.label].append(request)
                break
    tuned = [s for s in live if len(slices[s.label]) >= MIN_ROWS_PER_SERVER]
    if not tuned:
        result.notes.append("too few unanswered rows left to tune; default slots kept")
        return result
    started = time.perf_counter()
    sweeps = await asyncio.gather(*(
        tune_server(spec, slices[spec.label], starts[spec.label][0], store, settings.timeout, tolerance)
        for spec in tuned))
    for sweep in sweeps:
        result.sweeps.append(sweep)
        knee = sweep.knee
        if knee is not None:
            result.knees[sweep.server] = knee
        result.rows += sum(lv.ok for lv in sweep.levels)
    result.seconds = time.perf_counter() - started
    return result


async def tuned_run(source: PromptFile, *, servers: list[ServerSpec], store: Store,
                    settings: EngineSettings, say: Callable[[str], None], **job: Any) -> JobResult:
    """`corral run --auto-tune`: sweep on the job's first rows, then run the job on the knees."""
    report = source.report or source.scan()
    sample = list(itertools.islice(iter(source), int(report.rows * TUNE_SHARE)))
    tune = await auto_tune(servers, sample, store, settings, total_rows=report.rows)
    for line in tune.lines():
        say(f"auto-tune: {line}")
    return await run_prompt_file(source, servers=tune.apply(servers), store=store, settings=settings, **job)
