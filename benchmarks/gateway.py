#!/usr/bin/env python3
"""The gateway's figures (issue 20), side by side in one run, printed as a table.

1. Throughput: the same 10,000-line Batch file through `corral run` (the command, start to exit) and
   through `corral gateway` with the official `openai` SDK (upload, create, poll every 50 ms until
   completed, download the output), against one zero-latency fake Ollama in a process of its own.
2. Peak memory: the gateway's peak RSS (VmHWM) over a 1,000,000-line batch, upload to download.
3. SIGKILL: a 2,000-line batch, the gateway killed with SIGKILL at 5 moments and started again on the
   same --state; requests the fake received against lines, lost and duplicated custom_ids.

Usage: .venv/bin/python benchmarks/gateway.py [--lines 10000] [--big 1000000] [--kills 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import GatewayProcess, ServerProcess, run_corral, wait_for, write_batch  # noqa: E402


def gateway_batch(gateway: GatewayProcess, path: Path, poll: float = 0.05) -> tuple[Any, list[bytes], float]:
    """(final batch, output lines, seconds from upload to the downloaded output)."""
    client = gateway.client()
    started = time.monotonic()
    with open(path, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
    lines = client.files.content(batch.output_file_id).content.splitlines() if batch.output_file_id else []
    return batch, lines, time.monotonic() - started


def throughput(work: Path, lines: int, rounds: int) -> dict[str, Any]:
    fake = ServerProcess(work, "zero")
    path = write_batch(work / "throughput.jsonl", lines)
    run_rates, gateway_rates = [], []
    try:
        for round_ in range(rounds):
            code, _, err, seconds = run_corral(["run", str(path), "-s", fake.url, "-o",
                                                str(work / f"run{round_}.jsonl")], work, timeout=600)
            assert code == 0, err[-2000:]
            run_rates.append(lines / seconds)
            with GatewayProcess(work, "-s", fake.url, "--state", str(work / f"gw{round_}")) as gateway:
                batch, output, seconds = gateway_batch(gateway, path)
            assert batch.status == "completed" and len(output) == lines, batch
            gateway_rates.append(lines / seconds)
    finally:
        fake.stop()
    run_rate, gateway_rate = statistics.median(run_rates), statistics.median(gateway_rates)
    return {"corral run req/s": [round(r) for r in run_rates],
            "gateway req/s": [round(r) for r in gateway_rates],
            "gateway / corral run (medians)": round(gateway_rate / run_rate, 2)}


def peak_memory(work: Path, lines: int) -> dict[str, Any]:
    fake = ServerProcess(work, "zero-big")
    path = write_batch(work / "big.jsonl", lines)
    try:
        with GatewayProcess(work, "-s", fake.url, "--state", str(work / "gw-big")) as gateway:
            batch, output, seconds = gateway_batch(gateway, path, poll=1.0)
            status = Path(f"/proc/{gateway.pid}/status").read_text()
    finally:
        fake.stop()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    assert batch.status == "completed" and len(output) == lines, batch
    return {"lines": lines, "input MB": round(path.stat().st_size / 1e6, 1), "peak RSS MB": round(peak / 1024),
            "seconds": round(seconds, 1), "req/s": round(lines / seconds)}


def sigkill(work: Path, lines: int, kills: int) -> dict[str, Any]:
    fake = ServerProcess(work, "kill", "--latency", "0.01", "--slots", "8")
    path = write_batch(work / "kill.jsonl", lines)
    args = ("-s", fake.url, "--state", str(work / "gw-kill"))
    rng = random.Random(20)
    batch_id = None
    try:
        for kill in range(kills + 1):
            with GatewayProcess(work, *args) as gateway:
                client = gateway.client()
                if batch_id is None:
                    with open(path, "rb") as handle:
                        uploaded = client.files.create(file=handle, purpose="batch")
                    batch_id = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                     completion_window="24h").id
                if kill < kills:
                    target = len(fake.received()) + rng.randint(50, lines // (kills + 1))
                    wait_for(lambda t=target, c=client, b=batch_id: len(fake.received()) >= t
                             or c.batches.retrieve(b).status == "completed", 120, "progress")
                    os.kill(gateway.pid, signal.SIGKILL)
                    gateway.proc.wait(10)
                    continue
                wait_for(lambda c=client, b=batch_id: c.batches.retrieve(b).status == "completed", 300, "the end")
                batch = client.batches.retrieve(batch_id)
                output = [json.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]
    finally:
        fake.stop()
    ids = [row["custom_id"] for row in output]
    expected = {f"row-{i}" for i in range(lines)}
    sent = len(fake.received())
    return {"lines": lines, "kills": kills, "requests sent": sent, "re-sent": sent - lines,
            "lost": len(expected - set(ids)), "duplicated": len(ids) - len(set(ids))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# corral gateway figures: Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load {load}; {' '.join(sys.argv)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="corral-gw-bench-") as tmp:
        work = Path(tmp)
        for name, figures in (
            (f"throughput, {args.lines:,} lines, zero-latency fake", lambda: throughput(work, args.lines, args.rounds)),
            (f"SIGKILL x{args.kills}", lambda: sigkill(work, 2000, args.kills)),
            (f"peak memory, {args.big:,} lines", lambda: peak_memory(work, args.big)),
        ):
            result = figures()
            print(f"| {name} | " + ", ".join(f"{k}: {v}" for k, v in result.items()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
