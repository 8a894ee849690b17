#!/usr/bin/env python3
"""Does a mixed fleet stay busy to the end? corral's makespan against the theoretical optimum.

Prints figures; it is not a test. Simulated fleets of fake Ollama servers on loopback
(tests/fakes/), each with a number of slots (requests it runs at once; more wait) and a
speed. The service model, stated once and used by both the fakes and the optimum:

    seconds(item on server) = (prompt_tokens x 0.05 + num_predict) x TOKEN_SECONDS / speed(server)

(0.05: a prompt token costs a twentieth of a generated one; corral's own estimate uses the same
weight, but it has to *learn* each server's speed during the run.) The items have mixed lengths:
output tokens log-normal (median ~100, clipped to 8..1024), prompts 10..2000 tokens.

Theoretical optimum = total work / total capacity, where total work is the sum of the items'
seconds on one slot of speed 1 and total capacity the sum over servers of slots x speed: the fluid
bound, as if items could be split across servers. It cannot be beaten; no real schedule reaches it
exactly, because items are whole. With a server killed at time t_k, the bound is
t_k + (work - capacity x t_k) / capacity_after (the work the dead server had in flight is lost on
top of that, and counted against corral).

For the 50 ms fleets, whose requests all cost the same, the optimum with whole requests is known
exactly and is printed beside the fluid bound: the first time T at which the slots, each running
its requests back to back with no gap, can have finished them all (sum over servers of
slots x floor(T x speed / 50 ms) >= requests). 400 requests on the 1/2/4/8-slot fleet: 1.700 s,
against a fluid bound of 1.667 s that needs a request cut across servers. The target of issue 18
(<= 1.05x the optimum) is read against it; with a server killed, only the fluid bound is printed.

Contenders, side by side in one process, rounds alternating:
  corral            the engine as `corral run` drives it (config slots = the fake's slots)
  corral --no-hedge the same without tail hedging
  corral input order the same without length-aware order (longest_first=False), with hedging
  corral before #10 neither (input order, no hedging): the engine as it was before issue #10
  ollama-batch-cluster's way    one worker per server pulling from one shared queue in input order (a tiny
                    aiohttp loop; a worker whose server fails puts its item back and stops)

Fleets: "mixed" = four servers with 1, 2, 4 and 8 slots; "killed" = the same with the 4-slot
server killed at 30% of the optimum's makespan; "half-configured" = the "mixed" fleet with a config
that gives each server half its slots (1, 1, 2, 4), where corral has to learn the rest during the
run (servers.SlotControl), against the same engine with its slots fixed at the config's; "50 ms" =
the "mixed" fleet's servers answering every request in 50 ms / speed (400 short requests), where the
gap between a slot's answer and its next request shows: configured and learnt slots, each with and
without a request queued ahead per server (``queue_ahead``); "50 ms, killed" = the same with the
4-slot server killed at 30% of the optimum.

Usage: .venv/bin/python benchmarks/fleet.py [--items 400] [--rounds 3] [--token-ms 1.6] [--only-short]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corral.config import ServerSpec  # noqa: E402
from corral.engine import Engine, EngineSettings  # noqa: E402
from corral.engine.costs import CHARS_PER_TOKEN, PREFILL_WEIGHT  # noqa: E402
from corral.requests import Request  # noqa: E402
from corral.store import Store  # noqa: E402
from tests.fakes import FakeServer  # noqa: E402

MODEL = "llama3.2"
# (slots, speed): per-slot speed relative to 1. Capacity = 1x2 + 2x1 + 4x1 + 8x0.5 = 12.
FLEET = [(1, 2.0), (2, 1.0), (4, 1.0), (8, 0.5)]
VICTIM = 2           # the 4-slot server is the one killed in the "killed" fleet
SHORT_SECONDS = 0.05  # the short fleet: every request takes 50 ms at speed 1
SHORT_TOKENS = 8
KILL_AT = 0.30       # fraction of the optimum's makespan


@dataclass(frozen=True)
class Item:
    prompt_tokens: int
    output_tokens: int
    tag: int = 0        # makes otherwise equal items distinct (equal asks are sent once)

    @property
    def units(self) -> float:
        return self.prompt_tokens * PREFILL_WEIGHT + self.output_tokens

    @property
    def prompt(self) -> str:
        text = "w" * (self.prompt_tokens * CHARS_PER_TOKEN - 1)
        return f"{self.tag} {text}" if self.tag else text


def make_items(n: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        out = int(min(1024, max(8, rng.lognormvariate(4.6, 0.9))))
        items.append(Item(prompt_tokens=rng.randint(10, 2000), output_tokens=out))
    return items


def units_of(body: dict[str, Any]) -> float:
    """The service model, read back from the request the fake received."""
    chars = sum(len(m.get("content") or "") for m in body.get("messages") or [])
    prompt_tokens = chars // CHARS_PER_TOKEN + 1
    return prompt_tokens * PREFILL_WEIGHT + int((body.get("options") or {}).get("num_predict") or 0)


def start_fleet(token_seconds: float, fixed: float | None = None) -> list[FakeServer]:
    """The fleet's fakes; ``fixed``: every request takes that many seconds at speed 1 (the short
    fleet), else the service model above."""
    servers = []
    for slots, speed in FLEET:
        def latency(body: dict[str, Any], speed: float = speed) -> float:
            if fixed is not None:
                return fixed / speed
            return units_of(body) * token_seconds / speed
        servers.append(FakeServer(api="ollama", models=(MODEL,), slots=slots, latency=latency).start())
    return servers


def optimum(items: list[Item], token_seconds: float, kill_time: float | None,
            fixed: float | None = None) -> float:
    work = len(items) * fixed if fixed is not None else sum(i.units for i in items) * token_seconds
    capacity = sum(slots * speed for slots, speed in FLEET)
    if kill_time is None:
        return work / capacity
    after = capacity - FLEET[VICTIM][0] * FLEET[VICTIM][1]
    return kill_time + (work - capacity * kill_time) / after


def whole_optimum(requests: int, fixed: float) -> float:
    """The shortest makespan of ``requests`` whole requests of ``fixed`` seconds at speed 1, each
    slot running them back to back: the first slot-finish time by which enough have finished."""
    ends = sorted({k * fixed / speed for slots, speed in FLEET for k in range(1, requests + 1)})
    for end in ends:
        finished = sum(slots * int(end * speed / fixed + 1e-9) for slots, speed in FLEET)
        if finished >= requests:
            return end
    raise ValueError("no schedule")  # unreachable: one slot alone finishes them all


# -- contenders -----------------------------------------------------------------------------------
async def run_corral(servers: list[FakeServer], items: list[Item], hedge: bool = True,
                     longest_first: bool = True, configured: list[int | None] | None = None,
                     adaptive: bool = True, ahead: int | None = None) -> tuple[int, dict[str, Any]]:
    """``configured``: each server's max_concurrency (default: its real slots; None in it: not
    configured, learnt from the default); ``ahead``: each server's queue_ahead (None: the default)."""
    configured = configured or [slots for slots, _ in FLEET]
    specs = [ServerSpec(url=s.url, api="ollama", max_concurrency=slots, queue_ahead=ahead)
             for s, slots in zip(servers, configured)]
    requests = [Request(index=i, id=f"row-{i}", model=MODEL,
                        messages=[{"role": "user", "content": item.prompt}],
                        options={"num_predict": item.output_tokens})
                for i, item in enumerate(items)]
    ok = 0

    def on_outcome(outcome: Any) -> None:
        nonlocal ok
        ok += outcome.ok

    settings = EngineSettings(hedge=hedge, longest_first=longest_first, adaptive_slots=adaptive)
    async with Engine(specs, Store(None), settings) as engine:
        stats = await engine.run(requests, on_outcome, total=len(requests))
        learnt = "/".join(str(s.limit) for s in engine.servers)
    return ok, {"hedged": stats.hedged, "hedge_wins": stats.hedge_wins,
                "cancelled": stats.hedge_cancelled, "retries": stats.retries, "slots at the end": learnt}


async def run_batch_cluster_way(servers: list[FakeServer], items: list[Item]) -> tuple[int, dict[str, Any]]:
    """ollama-batch-cluster's way: one worker per server, one shared queue in input order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(items)):
        queue.put_nowait(i)
    done: set[int] = set()

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": MODEL, "stream": False,
                    "messages": [{"role": "user", "content": items[i].prompt}],
                    "options": {"num_predict": items[i].output_tokens}}
            try:
                async with session.post(f"{url}/api/chat", json=body) as resp:
                    await resp.read()
                    resp.raise_for_status()
            except aiohttp.ClientError:
                queue.put_nowait(i)  # this server is gone: give the item back and stop
                return
            done.add(i)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session, s.url) for s in servers))
    return len(done), {}


async def timed(contender: Callable[[], Any], victim: FakeServer | None, kill_after: float | None
                ) -> tuple[float, int, dict[str, Any], float | None]:
    kill_time: list[float] = []
    started = time.monotonic()
    killer = None
    if victim is not None and kill_after is not None:
        def kill() -> None:
            victim.kill()
            kill_time.append(time.monotonic() - started)
        killer = threading.Timer(kill_after, kill)
        killer.start()
    ok, extra = await contender()
    seconds = time.monotonic() - started
    if killer is not None:
        killer.cancel()
        killer.join()
    return seconds, ok, extra, (kill_time[0] if kill_time else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--token-ms", type=float, default=1.6, help="ms per cost unit at speed 1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--short-items", type=int, default=400, help="requests of the 50 ms fleet")
    parser.add_argument("--only-short", action="store_true", help="only the 50 ms fleet")
    args = parser.parse_args()
    logging.getLogger("corral").setLevel(logging.ERROR)  # the killed server's benching is expected
    token_seconds = args.token_ms / 1000
    items = make_items(args.items, args.seed)
    print(f"# corral fleet makespan benchmark  ({' '.join(sys.argv)})")
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"fleet (slots x speed): {', '.join(f'{s}x{v:g}' for s, v in FLEET)}; capacity "
          f"{sum(s * v for s, v in FLEET):g}; {len(items)} items, cost units "
          f"min {min(i.units for i in items):.0f} median {statistics.median(i.units for i in items):.0f} "
          f"max {max(i.units for i in items):.0f}; {args.token_ms:g} ms per unit at speed 1")
    print("model: seconds = (prompt_tokens x 0.05 + num_predict) x per-unit time / speed; "
          "optimum = total work / total capacity (fluid bound)")
    base_optimum = optimum(items, token_seconds, None)
    longest = max(i.units for i in items) * token_seconds / max(v for _, v in FLEET)
    print(f"optimum {base_optimum:.2f}s (longest item alone on the fastest slot: {longest:.2f}s)\n")

    contenders: dict[str, Callable[[list[FakeServer]], Any]] = {
        "corral": lambda fleet: run_corral(fleet, items, hedge=True),
        "corral --no-hedge": lambda fleet: run_corral(fleet, items, hedge=False),
        "corral input order": lambda fleet: run_corral(fleet, items, longest_first=False),
        "corral before #10": lambda fleet: run_corral(fleet, items, hedge=False, longest_first=False),
        "ollama-batch-cluster's way": lambda fleet: run_batch_cluster_way(fleet, items),
    }
    half = [max(1, slots // 2) for slots, _ in FLEET]
    fleets: dict[str, dict[str, Callable[[list[FakeServer]], Any]]] = {
        "mixed": contenders,
        "killed": contenders,
        "half-configured": {
            "corral (learns slots)": lambda fleet: run_corral(fleet, items, configured=half),
            "corral fixed slots": lambda fleet: run_corral(fleet, items, configured=half, adaptive=False),
            "corral, right config": lambda fleet: run_corral(fleet, items),
            "ollama-batch-cluster's way": lambda fleet: run_batch_cluster_way(fleet, items),
        },
    }
    short = [Item(prompt_tokens=10, output_tokens=SHORT_TOKENS, tag=i + 1) for i in range(args.short_items)]
    unset: list[int | None] = [None] * len(FLEET)
    short_fleet: dict[str, Callable[[list[FakeServer]], Any]] = {
        "configured": lambda fleet: run_corral(fleet, short),
        "configured, queue_ahead 0": lambda fleet: run_corral(fleet, short, ahead=0),
        "learnt": lambda fleet: run_corral(fleet, short, configured=unset),
        "learnt, queue_ahead 0": lambda fleet: run_corral(fleet, short, configured=unset, ahead=0),
        "ollama-batch-cluster's way": lambda fleet: run_batch_cluster_way(fleet, short),
    }
    if args.only_short:
        fleets = {}
    fleets["50 ms"] = short_fleet
    fleets["50 ms, killed"] = {name: short_fleet[name] for name in ("configured", "learnt")}
    for fleet_name, contenders in fleets.items():
        ratios: dict[str, list[float]] = {name: [] for name in contenders}
        whole_ratios: dict[str, list[float]] = {name: [] for name in contenders}
        notes: dict[str, dict[str, Any]] = {}
        fixed = SHORT_SECONDS if fleet_name.startswith("50 ms") else None
        fleet_items = short if fixed is not None else items
        killing = "killed" in fleet_name
        fleet_optimum = optimum(fleet_items, token_seconds, None, fixed)
        whole = whole_optimum(len(fleet_items), fixed) if fixed is not None and not killing else None
        for _ in range(args.rounds):
            for name, contender in contenders.items():
                fleet = start_fleet(token_seconds, fixed)
                try:
                    victim = fleet[VICTIM] if killing else None
                    kill_after = KILL_AT * fleet_optimum if victim is not None else None
                    seconds, ok, extra, kill_time = asyncio.run(
                        timed(lambda contender=contender, fleet=fleet: contender(fleet), victim, kill_after))
                finally:
                    for server in fleet:
                        server.stop()
                if ok != len(fleet_items):
                    print(f"  {name}: only {ok}/{len(fleet_items)} items answered")
                best = optimum(fleet_items, token_seconds, kill_time if killing else None, fixed)
                ratios[name].append(seconds / best)
                if whole is not None:
                    whole_ratios[name].append(seconds / whole)
                notes[name] = {**extra, "last": f"{seconds:.3f}s vs optimum {best:.3f}s"
                               + (f" (whole requests: {whole:.3f}s)" if whole is not None else "")}
        about = {"50 ms": f": {len(short)} requests of {SHORT_SECONDS * 1000:.0f} ms at speed 1; configured = "
                          f"max_concurrency {'/'.join(str(s) for s, _ in FLEET)}, learnt = not configured "
                          f"(Ollama's default 8, learnt); queue_ahead 0 = as before issue 18",
                 "killed": f": 4-slot server killed at {KILL_AT:.0%} of the optimum",
                 "50 ms, killed": f": the 50 ms fleet, 4-slot server killed at {KILL_AT:.0%} of the optimum",
                 "half-configured": f": configured slots {'/'.join(map(str, half))}, real "
                                    f"{'/'.join(str(s) for s, _ in FLEET)}"}
        print(f"## fleet '{fleet_name}'{about.get(fleet_name, '')}")
        if whole is not None:
            print(f"{'contender':<22} {'/whole-request optimum: median':>31} {'(min-max)':>14} "
                  f"{'/fluid bound':>13}  last round")
        else:
            print(f"{'contender':<22} {'makespan/optimum: median':>26} {'(min-max)':>14}  last round")
        for name, values in ratios.items():
            extra = ", ".join(f"{k} {v}" for k, v in notes[name].items())
            if whole is not None:
                exact = whole_ratios[name]
                print(f"{name:<22} {statistics.median(exact):>31.3f} "
                      f"{f'({min(exact):.3f}-{max(exact):.3f})':>14} {statistics.median(values):>13.3f}  {extra}")
            else:
                print(f"{name:<22} {statistics.median(values):>26.3f} "
                      f"{f'({min(values):.3f}-{max(values):.3f})':>14}  {extra}")
        print()


if __name__ == "__main__":
    main()
