"""Resume at the speed of reading the file (issue 21): re-runs, half-finished jobs, memory, journal size.

    .venv/bin/python benchmarks/resume.py --base b0064e8            # before and after, side by side
    .venv/bin/python benchmarks/resume.py --rows 100000 --memory-rows 10000,100000   # quicker

Every contender is a whole process (``python -m corral ...`` with PYTHONPATH set to one source
tree), against nginx answering every /api/chat with a canned answer in microseconds, so the client
is all that is measured. ``--tree NAME=SRC`` adds a source tree (default: this checkout as
``after``); ``--base COMMIT`` adds that commit as ``before`` (a temporary ``git worktree``, removed
at the end). Figures, one column per tree:

* re-run of a finished job (the same command again; it must send nothing) against the floor: a
  bare Python process that reads the same rows, parses them, hashes each one and writes one line
  per row. The floor uses the standard library's json and hashlib, as a script a user writes would;
  a second floor with orjson is printed as well. For ``corral run`` on JSONL, and for ``corral
  analyze`` and ``corral fill`` on CSV and Parquet (the table floor reads and writes with pandas
  and pyarrow, as corral does).
* a half-finished job: the time from starting the process to the first new request reaching the
  server, against the floor reading the finished half; and whether the progress line said it was
  skipping before that (``--progress log`` with a 0.1 s interval).
* peak RSS (the child's own, from wait4) of ``run``, ``fill`` and ``analyze`` (CSV) and their re-runs at each of
  ``--memory-rows``, and the ratio of the largest to the smallest.
* journal bytes per output byte after a finished ``run`` and ``fill``.

Re-runs and floors alternate (floor, tree 1, tree 2, floor, ...) ``--rounds`` times; the median is
shown. Timing figures move with whatever else the machine runs; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the nginx harness)

REPO = Path(__file__).resolve().parent.parent
FIELDS = ("Occasion", "Institution", "City")
FIELDS_ANSWER = '{"Occasion": "opening", "Institution": "city council", "City": "Bergen"}'

FLOOR_JSONL = r"""
import hashlib, json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in src:
        row = json.loads(line)
        key = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
        out.write(json.dumps({**row, "key": key}) + "\n")
"""
FLOOR_JSONL_ORJSON = r"""
import hashlib, sys, orjson
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as out:
    for line in src:
        row = orjson.loads(line)
        key = hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
        out.write(orjson.dumps({**row, "key": key}) + b"\n")
"""
FLOOR_TABLE = r"""
import hashlib, json, sys
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq
source, target = sys.argv[1], sys.argv[2]
def keyed(frame):
    frame = frame.copy()
    frame["key"] = [hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()
                    for r in frame.to_dict("records")]
    return frame
if source.endswith(".csv"):
    first = True
    with open(target, "w", newline="") as out:
        for chunk in pd.read_csv(source, chunksize=20000, dtype=str, keep_default_na=False):
            keyed(chunk).to_csv(out, header=first, index=False)
            first = False
else:
    writer = None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=20000):
        table = pa.Table.from_pandas(keyed(batch.to_pandas()), preserve_index=False)
        writer = writer or pq.ParquetWriter(target, table.schema)
        writer.write_table(table)
    writer.close()
"""


def nginx_conf(prefix: Path, port: int, extra: str = "") -> str:
    """throughput's nginx with /api/chat logged, so the first request of a resume can be timed."""
    conf = ORIGINAL_CONF(prefix, port, extra)
    return conf.replace("location = /api/chat {",
                        f"location = /api/chat {{\n            access_log {prefix}/chat.log;", 1)


ORIGINAL_CONF = throughput.nginx_conf


def nginx_string(obj: object) -> str:
    text = throughput.orjson.dumps(obj).decode()
    assert "'" not in text and "$" not in text, "canned JSON must be nginx-safe"
    return text.replace("\\", "\\\\")


class Server:
    """nginx answering /api/chat with ``content``; ``requests()`` counts what reached it."""

    def __init__(self, binary: str, content: str) -> None:
        throughput.nginx_conf = nginx_conf
        throughput.nginx_string = nginx_string
        saved = throughput.CANNED_CHAT
        throughput.CANNED_CHAT = {**saved, "message": {"role": "assistant", "content": content}}
        try:
            self.nginx = throughput.Nginx(binary).start()
        finally:
            throughput.CANNED_CHAT = saved
        self.log = self.nginx.dir / "chat.log"

    @property
    def url(self) -> str:
        return self.nginx.url

    def requests(self) -> int:
        try:
            with open(self.log, "rb") as handle:
                return sum(1 for _ in handle)
        except FileNotFoundError:
            return 0

    def logged_bytes(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        self.nginx.stop()


@dataclass
class Ran:
    seconds: float
    peak_mb: float
    returncode: int
    stderr: str


@dataclass
class Tree:
    name: str
    src: Path
    figures: dict[str, str] = field(default_factory=dict)


def run_process(command: list[str], pythonpath: Path | None, *, env: dict[str, str] | None = None) -> Ran:
    """Run a whole process; its wall time and its own peak RSS (wait4, not RUSAGE_CHILDREN)."""
    environ = {**os.environ, **(env or {})}
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environ)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Ran(seconds, usage.ru_maxrss / 1024, proc.returncode, text)


def corral(tree: Tree, args: list[str], **kwargs: object) -> Ran:
    ran = run_process([sys.executable, "-m", "corral", *args], tree.src, **kwargs)  # type: ignore[arg-type]
    if ran.returncode != 0:
        raise RuntimeError(f"{tree.name}: corral {' '.join(args)} failed:\n{ran.stderr[-3000:]}")
    return ran


def floor(script: str, source: Path, target: Path) -> Ran:
    ran = run_process([sys.executable, "-c", script, str(source), str(target)], None)
    if ran.returncode != 0:
        raise RuntimeError(f"the floor failed:\n{ran.stderr[-3000:]}")
    return ran


# -- inputs ------------------------------------------------------------------------------------------
def write_prompts(path: Path, rows: int) -> None:
    with open(path, "wb") as handle:
        for i in range(rows):
            handle.write(throughput.orjson.dumps(
                {"id": f"q{i}", "prompt": f"Question {i}: what is the capital of country number "
                                          f"{i % 197}, and why did it become the capital?"}) + b"\n")


def write_events(path: Path, rows: int, gap_every: int) -> int:
    """fill_memory's events; one row in ``gap_every`` lacks a field (2% with 50)."""
    gaps = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "title_en", "occ", "inst", "place"])
        for i in range(rows):
            title = f"Event {i}: the mayor opened the new library wing, \"a landmark\", on day {i % 365}"
            occ = "opening"
            if i % gap_every == 0:
                gaps += 1
                occ = ""
            writer.writerow([i, title, occ, "council", "Bergen"])
    return gaps


def to_parquet(csv_path: Path) -> Path:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    target = csv_path.with_suffix(".parquet")
    options = pacsv.ConvertOptions(column_types={"occ": "string", "inst": "string", "place": "string"},
                                   strings_can_be_null=True)
    pq.write_table(pacsv.read_csv(csv_path, convert_options=options), target)
    return target


def journal_bytes(output: Path) -> int:
    base = output.with_name(output.name + ".corral.db")
    return sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.exists())


# -- the measurements ----------------------------------------------------------------------------------
def median_rounds(rounds: int, contenders: dict[str, Callable[[], Ran]]) -> dict[str, list[Ran]]:
    results: dict[str, list[Ran]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, contender in contenders.items():
            results[name].append(contender())
    return results


def med(runs: list[Ran]) -> float:
    return statistics.median(r.seconds for r in runs)


def rerun_figures(label: str, trees: list[Tree], fresh: Callable[[Tree], list[str]],
                  rerun: Callable[[Tree], list[str]], floors: dict[str, Callable[[], Ran]],
                  rounds: int, server: Server, out: dict[str, dict[str, str]],
                  memory: dict[str, dict[str, dict[str, float]]] | None = None,
                  size_of: Callable[[Tree], tuple[int, int]] | None = None) -> None:
    """One job: a fresh run per tree, then re-runs against the floor(s), alternating."""
    for tree in trees:
        before = server.requests()
        ran = corral(tree, fresh(tree))
        if memory is not None:
            memory.setdefault(f"{label}", {}).setdefault(tree.name, {})["fresh"] = ran.peak_mb
        if size_of is not None:
            journal, output = size_of(tree)
            out.setdefault(f"journal bytes / output bytes, {label}", {})[tree.name] = (
                f"{journal / output:.2f} ({journal / 1e6:.1f} / {output / 1e6:.1f} MB)")
        print(f"  {tree.name}: {label} fresh run {ran.seconds:.1f}s, "
              f"{server.requests() - before:,} requests", flush=True)
    contenders: dict[str, Callable[[], Ran]] = dict(floors)
    for tree in trees:
        contenders[tree.name] = (lambda t=tree: corral(t, rerun(t)))
    sent_before = server.requests()
    results = median_rounds(rounds, contenders)
    sent = server.requests() - sent_before
    floor_seconds = med(results[next(iter(floors))])
    row = out.setdefault(f"re-run {label}", {})
    for name, runs in results.items():
        seconds = med(runs)
        if name in floors:
            row[name] = f"{seconds:.2f}s"
        else:
            row[name] = f"{seconds:.2f}s = {seconds / floor_seconds:.2f}x floor"
            if memory is not None:
                memory[label][name]["re-run"] = max(r.peak_mb for r in runs)
    row["requests sent by the re-runs"] = str(sent)
    print(f"  re-run {label}: " + "; ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def half_finished(trees: list[Tree], tmp: Path, rows: int, rounds: int, server: Server,
                  out: dict[str, dict[str, str]]) -> None:
    """A job stopped (Ctrl-C) once half its rows were answered, then run again: the time from
    process start to its first new request, against the floor reading the finished half."""
    full = tmp / f"half-{rows}.jsonl"
    half = tmp / f"half-{rows}-first.jsonl"
    write_prompts(full, rows)
    with open(full, "rb") as src, open(half, "wb") as dst:
        for i, line in enumerate(src):
            if i >= rows // 2:
                break
            dst.write(line)
    pristine: dict[str, Path] = {}
    journaled: dict[str, int] = {}
    for tree in trees:
        work = tmp / f"half-{tree.name}"
        work.mkdir()
        start = server.requests()
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "run", str(full), "-o", str(work / "out.jsonl"), "-s", server.url,
             "-m", "llama3.2", "-j", "32", "--progress", "none", "--no-gpu-monitor"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(tree.src)})
        while server.requests() - start < rows // 2:
            if proc.poll() is not None:
                raise RuntimeError(f"{tree.name}: the first half ended early")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # our own child, stopped like an operator would
        proc.wait(120)
        db = work / "out.jsonl.corral.db"
        pristine[tree.name] = tmp / f"half-{tree.name}.db"
        shutil.copy(db, pristine[tree.name])
        with sqlite3.connect(pristine[tree.name]) as con:
            journaled[tree.name] = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def first_request(tree: Tree) -> Ran:
        work = tmp / f"half-{tree.name}"
        for leftover in work.glob("out.jsonl.corral.db*"):
            leftover.unlink()
        shutil.copy(pristine[tree.name], work / "out.jsonl.corral.db")
        (work / "out.jsonl").unlink(missing_ok=True)
        logged = server.logged_bytes()
        env = {**os.environ, "PYTHONPATH": str(tree.src), "CORRAL_LOG_INTERVAL": "0.1"}
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "run", str(full), "-o", str(work / "out.jsonl"), "-s",
                 server.url, "-m", "llama3.2", "-j", "32", "--progress", "log", "--no-gpu-monitor"],
                stdout=subprocess.DEVNULL, stderr=err, env=env)
            while server.logged_bytes() == logged:
                if proc.poll() is not None:
                    raise RuntimeError(f"{tree.name}: the resume ended before sending anything")
                time.sleep(0.002)
            seconds = time.perf_counter() - start
            proc.send_signal(signal.SIGINT)  # our own child: stop it, the rest is not measured
            proc.wait(60)
            err.seek(0)
            text = err.read().decode(errors="replace")
        return Ran(seconds, 0.0, 0, text)

    contenders: dict[str, Callable[[], Ran]] = {
        "floor (json)": lambda: floor(FLOOR_JSONL, half, tmp / "floor-half.jsonl"),
        "floor (orjson)": lambda: floor(FLOOR_JSONL_ORJSON, half, tmp / "floor-half.jsonl"),
    }
    for tree in trees:
        contenders[tree.name] = (lambda t=tree: first_request(t))
    results = median_rounds(rounds, contenders)
    floor_seconds = med(results["floor (json)"])
    row = out.setdefault(f"first new request, job of {rows:,} stopped at half-way", {})
    said = out.setdefault("progress line says it is skipping (before the first request)", {})
    for name, runs in results.items():
        seconds = med(runs)
        if name.startswith("floor"):
            row[name] = f"{seconds:.2f}s (reading the finished half)"
            continue
        row[name] = (f"{seconds:.2f}s = {seconds / floor_seconds:.2f}x floor "
                     f"({journaled[name]:,} rows in the journal)")
        lines = [line for line in runs[-1].stderr.splitlines() if line.startswith("corral:")]
        said[name] = "yes: " + next((line[:110] for line in lines if "skipping" in line), "") if any(
            "skipping" in line for line in lines) else "no"
    print("  " + "; ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--base", default=None, metavar="COMMIT", help="measure this commit as 'before'")
    parser.add_argument("--rows", default="100000,1000000", help="re-run sizes (JSONL run and fill)")
    parser.add_argument("--table-rows", default="100000", help="analyze re-run sizes (CSV and Parquet)")
    parser.add_argument("--memory-rows", default="10000,1000000")
    parser.add_argument("--half-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: run,fill,analyze,half")
    args = parser.parse_args()
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        print("nginx is needed: apt-get install nginx-light", file=sys.stderr)
        sys.exit(2)
    skip = set(filter(None, args.skip.split(",")))
    rows = [int(n) for n in args.rows.split(",") if n]
    table_rows = [int(n) for n in args.table_rows.split(",") if n]
    memory_rows = [int(n) for n in args.memory_rows.split(",") if n]
    tmp = Path(tempfile.mkdtemp(prefix="corral-resume-bench-"))
    trees: list[Tree] = []
    base_worktree: Path | None = None
    prose = fields = None
    try:
        if args.base:
            base_worktree = tmp / "base"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_worktree), args.base],
                           check=True, capture_output=True)
            trees.append(Tree("before", base_worktree / "src"))
        for spec in args.tree or ["after=" + str(REPO / "src")]:
            name, _, src = spec.partition("=")
            trees.append(Tree(name, Path(src).resolve()))
        print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; trees: "
              + ", ".join(f"{t.name}={t.src}" for t in trees), flush=True)
        prose = Server(binary, throughput.CANNED_CHAT["message"]["content"])
        fields = Server(binary, FIELDS_ANSWER)
        out: dict[str, dict[str, str]] = {}
        memory: dict[str, dict[str, dict[str, float]]] = {}
        common = ["--progress", "none"]

        if "run" not in skip:
            for n in sorted(set(rows) | set(memory_rows)):
                source = tmp / f"prompts-{n}.jsonl"
                write_prompts(source, n)

                def run_args(tree: Tree, n: int = n, source: Path = source) -> list[str]:
                    return ["run", str(source), "-o", str(tmp / f"run-{tree.name}-{n}.jsonl"), "-s", prose.url,
                            "-m", "llama3.2", "-j", "32", "--no-gpu-monitor", *common]

                def sizes(tree: Tree, n: int = n) -> tuple[int, int]:
                    output = tmp / f"run-{tree.name}-{n}.jsonl"
                    return journal_bytes(output), output.stat().st_size

                floors = {"floor (json)": lambda s=source: floor(FLOOR_JSONL, s, tmp / "floor.jsonl"),
                          "floor (orjson)": lambda s=source: floor(FLOOR_JSONL_ORJSON, s, tmp / "floor.jsonl")}
                rerun_figures(f"run, JSONL, {n:,} rows", trees, run_args, run_args, floors,
                              args.rounds if n in rows else 1, prose, out, memory, sizes)
                for tree in trees:
                    (tmp / f"run-{tree.name}-{n}.jsonl").unlink()
                    for db in tmp.glob(f"run-{tree.name}-{n}.jsonl.corral.db*"):
                        db.unlink()
                source.unlink()

        for kind in ("fill", "analyze"):
            if kind in skip:
                continue
            sizes_here = sorted(set(rows if kind == "fill" else table_rows) | set(memory_rows))
            for n in sizes_here:
                for suffix in ("csv", "parquet"):
                    if suffix == "parquet" and n not in (rows if kind == "fill" else table_rows):
                        continue  # memory figures on CSV, as the issue's
                    events = tmp / f"events-{n}.csv"
                    if not events.exists():
                        write_events(events, n, 50 if kind == "fill" else 1)
                    source = events if suffix == "csv" else to_parquet(events)

                    def table_args(tree: Tree, n: int = n, source: Path = source, kind: str = kind,
                                   suffix: str = suffix) -> list[str]:
                        target = str(tmp / f"{kind}-{tree.name}-{n}.{suffix}")
                        if kind == "fill":
                            return ["fill", str(source), "-o", target, "--fields", ",".join(FIELDS),
                                    "--col-map", "Occasion=occ,Institution=inst,City=place", "-s", fields.url,
                                    "-m", "llama3.2", "-j", "32", *common]
                        return ["analyze", str(source), "-o", target, "--text-column", "title_en",
                                "--prompt", "Summarise: {text}", "-s", prose.url, "-m", "llama3.2",
                                "-j", "32", *common]

                    def table_sizes(tree: Tree, n: int = n, kind: str = kind, suffix: str = suffix
                                    ) -> tuple[int, int]:
                        output = tmp / f"{kind}-{tree.name}-{n}.{suffix}"
                        return journal_bytes(output), output.stat().st_size

                    floors = {"floor (pandas, json)": lambda s=source, x=suffix: floor(
                        FLOOR_TABLE, s, tmp / f"floor.{x}")}
                    label = f"{kind}, {suffix.upper()}, {n:,} rows"
                    rerun_figures(label, trees, table_args, table_args, floors,
                                  args.rounds if n in (rows if kind == "fill" else table_rows) else 1,
                                  fields if kind == "fill" else prose, out,
                                  memory if suffix == "csv" else None,
                                  table_sizes if kind == "fill" and suffix == "csv" else None)
                    for tree in trees:
                        for leftover in tmp.glob(f"{kind}-{tree.name}-{n}.{suffix}*"):
                            leftover.unlink()
                if (tmp / f"events-{n}.csv").exists():
                    (tmp / f"events-{n}.csv").unlink()
                (tmp / f"events-{n}.parquet").unlink(missing_ok=True)

        if "half" not in skip:
            half_finished(trees, tmp, args.half_rows, args.rounds, prose, out)

        for kind in ("run, JSONL", "fill, CSV", "analyze, CSV"):
            for phase in ("fresh", "re-run"):
                row = out.setdefault(f"peak RSS, {kind}, {phase}", {})
                for tree in trees:
                    peaks = [(n, memory.get(f"{kind}, {n:,} rows", {}).get(tree.name, {}).get(phase))
                             for n in memory_rows]
                    peaks = [(n, p) for n, p in peaks if p is not None]
                    if len(peaks) >= 2:
                        row[tree.name] = (", ".join(f"{p:.0f} MB at {n:,}" for n, p in peaks)
                                          + f" = {peaks[-1][1] / peaks[0][1]:.2f}x")
                if not row:
                    del out[f"peak RSS, {kind}, {phase}"]
        print()
        names = [t.name for t in trees]
        for figure, values in out.items():
            print(figure)
            for name, value in values.items():
                if name not in names:
                    print(f"    {name:<28} {value}")
            for name in names:
                if name in values:
                    print(f"    {name:<28} {values[name]}")
    finally:
        for server in (prose, fields):
            if server is not None:
                server.stop()
        if base_worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_worktree)],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
