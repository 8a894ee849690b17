#!/usr/bin/env python3
"""Does `corral run --auto-tune` reach the best hand-picked concurrency on a real server?

Prints figures; it is not a test. The embedded llama.cpp server (SmolLM2-135M through
corral.local.LocalServer, ``--parallel`` slots, 8 by default) answers the same job (``--prompts``
distinct prompts, max_tokens 48, temperature 0, seed 1) run through the CLI's own code path
(PromptFile in, SQLite journal, JSONL out, a fresh output and store every time):

* hand-picked ``--concurrency`` 1, 2, 4, 8 (fixed slots: no slot learning);
* ``--auto-tune``: the inline sweep on the job's first rows, then the job at the knee (slot learning
  on from there); the sweep's time is part of its run time;
* corral's default (no -j: twice llama.cpp's slots, then slot learning), for reference.

Each run is timed from the call to the last row written (probe included, the same for all). The
settings alternate within each round (``--rounds``, default 3) so load from other processes on the
machine falls on all of them alike. Per setting: the median output tokens/s over the rounds (and
min-max); then auto-tune / best hand-picked, per round and as the ratio of medians.

Usage: .venv/bin/python benchmarks/autotune.py [--prompts 64] [--rounds 3] [--parallel 8] [--threads N]
                                                [--no-default]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from corral import runtime
from corral.bench.tune import tuned_run
from corral.config import ServerSpec
from corral.engine import EngineSettings
from corral.jobs import open_sinks, run_prompt_file
from corral.local import LocalServer
from corral.sources import Defaults, PromptFile
from corral.store import Store

REPO = Path(__file__).resolve().parent.parent


def write_prompts(path: Path, count: int) -> None:
    """``count`` distinct prompts from the example file (numbered, so none is answered twice)."""
    base = [json.loads(line)["content"] for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()
            if line.strip()]
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"({i + 1}) {base[i % len(base)]}"}) + "\n")


def run_once(spec: ServerSpec, prompts: Path, work: Path, setting: str, tag: str) -> tuple[float, int, str]:
    """One job; (seconds, output tokens, what auto-tune picked)."""
    defaults = Defaults(model=spec.models[0] if spec.models else None,
                        options={"num_predict": 48, "temperature": 0, "seed": 1})
    concurrency = int(setting) if setting.isdigit() else None
    settings = EngineSettings(concurrency=concurrency)
    said: list[str] = []
    output = work / f"{tag}.jsonl"
    with ExitStack() as stack:
        source = PromptFile(str(prompts), defaults)
        report = source.scan()
        sinks = open_sinks(str(output), None, report, stack)
        store = stack.enter_context(Store(work / f"{tag}.db"))
        job = dict(sinks=sinks, progress="none")
        started = time.perf_counter()
        if setting == "auto-tune":
            result = runtime.run(tuned_run(source, servers=[spec], store=store, settings=settings,
                                           say=said.append, **job))
        else:
            result = runtime.run(run_prompt_file(source, servers=[spec], store=store, settings=settings, **job))
        seconds = time.perf_counter() - started
    assert result.stats.failed == 0, f"{setting}: {result.stats.failed} rows failed"
    tokens = sum(json.loads(line).get("eval_count") or 0 for line in output.read_text().splitlines())
    picked = next((line.split(": ", 1)[1] for line in said if "in flight" in line), "")
    if concurrency is None and result.engine is not None:  # where slot learning left the server
        control = result.engine.servers[0].control
        picked += f" [slots at the end {control.limit}: {control.raises} raises, {control.cuts} cuts]"
    return seconds, tokens, picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=8, help="llama.cpp slots (-np)")
    parser.add_argument("--no-default", action="store_true", help="leave out corral's default setting")
    parser.add_argument("--hand-picked", default="1,2,4,8", help="hand-picked concurrencies [1,2,4,8]")
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp CPU threads [its default: one per core]; 1 is steadier on a busy machine")
    args = parser.parse_args()
    hand_picked = [int(c) for c in args.hand_picked.split(",")]
    settings = [*(str(c) for c in hand_picked), "auto-tune", *([] if args.no_default else ["default"])]
    rates: dict[str, list[float]] = {s: [] for s in settings}
    picks: list[str] = []
    print(f"corral auto-tune benchmark: {args.prompts} prompts x 48 tokens, {args.rounds} rounds, "
          f"llama.cpp with {args.parallel} slots and {args.threads or 'default'} threads, {os.cpu_count()} CPUs",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="corral-autotune-") as tmp, \
            LocalServer(n_parallel=args.parallel, threads=args.threads) as server:
        work = Path(tmp)
        prompts = work / "prompts.jsonl"
        write_prompts(prompts, args.prompts)
        spec = ServerSpec(url=server.url, api="openai", models=(server.model,), name="local")
        run_once(spec, prompts, work, "8", "warmup")  # the model's pages in memory, the prompt cache warm
        for round_no in range(args.rounds):
            order = settings if round_no % 2 == 0 else list(reversed(settings))
            for setting in order:
                seconds, tokens, picked = run_once(spec, prompts, work, setting, f"r{round_no}-{setting}")
                rates[setting].append(tokens / seconds)
                if picked:
                    picks.append(f"{setting} (round {round_no + 1}): {picked}")
                print(f"  round {round_no + 1}: {setting:>9}: {seconds:6.2f} s, {tokens} tokens, "
                      f"{tokens / seconds:6.1f} tok/s {picked}", flush=True)
    print()
    print(f"{'setting':>10}  {'median tok/s':>12}  {'min-max':>15}")
    for setting in settings:
        values = rates[setting]
        print(f"{setting:>10}  {statistics.median(values):12.1f}  {min(values):6.1f}-{max(values):6.1f}")
    best = max(hand_picked, key=lambda c: statistics.median(rates[str(c)]))
    per_round = [a / max(rates[str(c)][i] for c in hand_picked) for i, a in enumerate(rates["auto-tune"])]
    ratio = statistics.median(rates["auto-tune"]) / statistics.median(rates[str(best)])
    print(f"\nbest hand-picked: --concurrency {best}")
    print(f"auto-tune / best hand-picked (medians): {ratio:.3f}")
    print("auto-tune / best hand-picked of the same round: " + ", ".join(f"{r:.3f}" for r in per_round))
    if rates.get("default"):
        print(f"default / best hand-picked (medians): "
              f"{statistics.median(rates['default']) / statistics.median(rates[str(best)]):.3f}")
    print("auto-tune picked:\n  " + "\n  ".join(picks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
