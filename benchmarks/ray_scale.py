#!/usr/bin/env python3
"""One process vs Ray on the same table job, against fake servers on this machine.

Prints figures; it is not a test. The same multi-file Parquet input (``--files`` x ``--rows``) goes
through the three fronts, one after another, each against fresh fake Ollama servers:

1. ``run_analysis`` in this process (the single-process path);
2. ``ray.data.read_parquet(...).map_batches(corral.ray.Processor, ...)`` with ``--actors`` actors
   (Ray started once beforehand: its start-up is reported apart);
3. ``corral run DIR --ray ADDRESS -o OUT/`` (a subprocess joining the same Ray instance).

Two fleets: ``zero`` (no latency, so the client is the bottleneck: the single-process ceiling) and
``slow`` (``--latency`` seconds per answer, so the servers' slots are: what scaling out cannot beat).
Every output is checked: each row exactly once, no error.

Usage: .venv/bin/python benchmarks/ray_scale.py [--files 4] [--rows 2500] [--actors 2] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only

import pandas as pd  # noqa: E402
import ray  # noqa: E402

import corral  # noqa: E402
import corral.ray  # noqa: E402
from tests.fakes import FakeServer  # noqa: E402

SERVERS = 2
SLOTS = 8   # per server, in the config
TEMPLATE = "Summarise: {text}"


def make_input(folder: Path, files: int, rows: int) -> int:
    folder.mkdir(parents=True)
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        pd.DataFrame({"id": list(ids), "text": [f"row {i} " + "lorem " * (i % 7) for i in ids]}
                     ).to_parquet(folder / f"part{f:03d}.parquet")
    return files * rows


def fleet(latency: float) -> tuple[list[FakeServer], dict]:
    servers = [FakeServer(api="ollama", latency=latency).start() for _ in range(SERVERS)]
    config = {"model": "llama3.2",
              "servers": [{"url": s.url, "api": "ollama", "max_concurrency": SLOTS} for s in servers]}
    return servers, config


def toml(config: dict, path: Path) -> Path:
    lines = [f'model = "{config["model"]}"']
    for s in config["servers"]:
        lines += ["[[servers]]", f'url = "{s["url"]}"', 'api = "ollama"', f'max_concurrency = {SLOTS}']
    path.write_text("\n".join(lines) + "\n")
    return path


def check(frame: pd.DataFrame, total: int, what: str) -> None:
    ids = sorted(frame["id"].tolist())
    if ids != list(range(total)) or frame["error"].notna().any():
        raise SystemExit(f"{what}: wrong output ({len(ids)} rows, {frame['error'].notna().sum()} errors)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2500, help="rows per file")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per answer in the slow fleet")
    args = ap.parse_args()
    print("corral ray scale benchmark")
    print(f"command : {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine : {platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"versions: corral {corral.__version__}, ray {ray.__version__}, pandas {pd.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        total = make_input(work / "in", args.files, args.rows)
        frame = pd.concat([pd.read_parquet(p) for p in sorted((work / "in").glob("*.parquet"))],
                          ignore_index=True)
        started = time.monotonic()
        context = ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"input   : {args.files} Parquet files x {args.rows} rows = {total} rows; fleet: {SERVERS} "
              f"fake Ollama servers x {SLOTS} slots; {args.actors} Ray actors; "
              f"ray.init {time.monotonic() - started:.1f}s")
        try:
            for name, latency in (("zero", 0.0), ("slow", args.latency)):
                bound = f"; slot bound {SERVERS * SLOTS / latency:,.0f} req/s" if latency else ""
                print(f"\n== fleet {name}: latency {latency}s per answer{bound} ==")
                for front in ("run_analysis", "map_batches", "corral run --ray"):
                    servers, config = fleet(latency)
                    try:
                        t0 = time.monotonic()
                        if front == "run_analysis":
                            out = corral.run_analysis(frame, text_column="text", model_names="llama3.2",
                                                      prompt_template=TEMPLATE, servers=None,
                                                      config=str(toml(config, work / "c.toml")),
                                                      progress=False)
                        elif front == "map_batches":
                            out = ray.data.read_parquet(str(work / "in")).repartition(4 * args.actors).map_batches(
                                corral.ray.Processor, batch_size=500, batch_format="pandas", num_cpus=0.5,
                                compute=ray.data.ActorPoolStrategy(size=args.actors),
                                fn_constructor_kwargs={"config": config, "num_actors": args.actors,
                                                       "prompt_template": TEMPLATE}).to_pandas()
                        else:
                            out_dir = work / f"out-{name}"
                            result = subprocess.run(
                                [sys.executable, "-m", "corral", "run", str(work / "in"), "--ray",
                                 context.address_info["gcs_address"], "--ray-actors", str(args.actors),
                                 "--config", str(toml(config, work / "c.toml")), "--prompt", TEMPLATE,
                                 "-o", str(out_dir), "--progress", "none"],
                                capture_output=True, text=True, cwd=REPO)
                            if result.returncode != 0:
                                raise SystemExit(result.stderr[-2000:])
                            out = pd.concat([pd.read_parquet(p) for p in sorted(out_dir.glob("*.parquet"))])
                        seconds = time.monotonic() - t0
                        check(out, total, front)
                        peak = sum(s.max_in_flight for s in servers)
                        print(f"  {front:<18} {seconds:6.2f}s  {total / seconds:8,.0f} rows/s   "
                              f"peak in flight {peak} (configured {SERVERS * SLOTS})")
                    finally:
                        for s in servers:
                            s.stop()
        finally:
            ray.shutdown()
    print("\nmap_batches and corral run --ray include starting their actors (and, for the CLI, its "
          "own process and Ray connection); ray.init is counted once, above.")


if __name__ == "__main__":
    main()
