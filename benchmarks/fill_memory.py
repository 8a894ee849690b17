"""Memory and speed of `corral fill` on a large CSV against a zero-latency server.

    .venv/bin/python benchmarks/fill_memory.py [--rows 1000000] [--workers 32]

Writes a CSV of ``--rows`` events (half of them missing a field or two), starts nginx answering every
/api/chat with a canned JSON object, runs ``corral fill`` on it as a separate process, and prints that
process's peak RSS (target: at most 300 MB for 1,000,000 rows), the rows sent, and the time per
100,000 rows. The client is the bottleneck by design: nginx answers in microseconds.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the nginx harness)

FIELDS = ("Occasion", "Institution", "City")
ANSWER = '{"Occasion": "opening", "Institution": "city council", "City": "Bergen"}'


def nginx_string(obj: object) -> str:
    """JSON for an nginx single-quoted string: nginx unescapes backslashes, so double them."""
    text = throughput.orjson.dumps(obj).decode()
    assert "'" not in text and "$" not in text, "canned JSON must be nginx-safe"
    return text.replace("\\", "\\\\")


def write_events(path: Path, rows: int) -> int:
    """Events with gaps: every other row lacks one or two fields; returns how many rows have gaps."""
    gaps = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "title_en", "occ", "inst", "place"])
        for i in range(rows):
            title = f"Event {i}: the mayor opened the new library wing, \"a landmark\", on day {i % 365}"
            occ, inst, place = "opening", "council", "Bergen"
            if i % 2:
                gaps += 1
                occ = ""
                if i % 3 == 0:
                    place = ""
            writer.writerow([i, title, occ, inst, place])
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    args = parser.parse_args()
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        print("nginx is needed: apt-get install nginx-light", file=sys.stderr)
        sys.exit(2)

    throughput.CANNED_CHAT = {**throughput.CANNED_CHAT,
                              "message": {"role": "assistant", "content": ANSWER}}
    throughput.nginx_string = nginx_string
    tmp = Path(tempfile.mkdtemp(prefix="corral-fill-bench-"))
    server = throughput.Nginx(binary).start()
    try:
        source = tmp / "events.csv"
        t0 = time.perf_counter()
        gaps = write_events(source, args.rows)
        print(f"wrote {args.rows:,} rows ({source.stat().st_size / 1e6:.0f} MB), {gaps:,} with gaps, "
              f"in {time.perf_counter() - t0:.1f}s")
        command = [sys.executable, "-m", "corral", "fill", str(source), "-o", str(tmp / "filled.csv"),
                   "--fields", ",".join(FIELDS), "--col-map", "Occasion=occ,Institution=inst,City=place",
                   "--server", server.url, "-m", "llama3.2", "--workers", str(args.workers),
                   "--chunk-size", str(args.chunk_size), "--progress", "log"]
        print("$ corral " + " ".join(command[3:]).replace(str(tmp) + "/", ""))
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "CORRAL_LOG_INTERVAL": "30"})
        elapsed = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(proc.returncode)
        with open(tmp / "filled.csv", encoding="utf-8") as handle:
            out_rows = sum(1 for _ in csv.reader(handle)) - 1
        print(proc.stderr.strip().splitlines()[-1])
        print()
        print(f"rows in / out        : {args.rows:,} / {out_rows:,}")
        print(f"requests sent        : {gaps:,} (only rows with gaps)")
        print(f"wall time            : {elapsed:.1f}s  ({gaps / elapsed:,.0f} requests/s)")
        print(f"time per 100k rows   : {elapsed / args.rows * 100_000:.1f}s")
        print(f"peak RSS of corral   : {peak_mb:.0f} MB  (target <= 300 MB)")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
