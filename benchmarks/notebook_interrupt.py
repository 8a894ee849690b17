"""Jupyter's stop button (issue 19): seconds from the interrupt to the kernel being idle, per front.

    .venv/bin/python benchmarks/notebook_interrupt.py              # before and after, side by side
    .venv/bin/python benchmarks/notebook_interrupt.py --rows 400

Each front of tests/notebooks.py (batch_generate, run_analysis, fill_missing_fields,
fill_missing_fields_from_csv, embed) runs in a real ipykernel started by nbclient, against its own
fake Ollama on 127.0.0.1 answering in ``--latency`` seconds with 2 slots; once the server has
answered 4 requests the kernel manager interrupts the kernel (what the stop button does), and the
time until nbclient sees the cell end and the kernel idle is measured.

``before`` is the same kernel with corral.runtime's helper replaced by the code run_sync had before
the fix (the job on a ThreadPoolExecutor whose exit waits for it), so both columns come from this
checkout in one run. Also printed: requests the server received of ``--rows``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import FakeServer  # noqa: E402
from tests.notebooks import FRONTS, PRESS_STOP_AT, SETUP, Kernel, error_name  # noqa: E402

#: run_sync's helper as it was before the fix: the interrupt lands in .result(), and the pool's
#: exit then waits for the whole job.
BEFORE = """
import concurrent.futures, corral.runtime as _rt
class _Before:
    def __init__(self, coro):
        self.coro = coro
    def result(self):
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="corral") as pool:
            return pool.submit(_rt.run, self.coro).result()
_rt._Helper = _Before
"""


async def measure(variant: str, rows: int, latency: float, folder: Path) -> dict[str, tuple[float, int, str]]:
    kernel = Kernel()
    figures = {}
    async with kernel.client.async_setup_kernel():
        await kernel.run(SETUP.format(rows=rows))
        if variant == "before":
            await kernel.run(BEFORE)
        for front in FRONTS:
            server = FakeServer(api="ollama", latency=latency, slots=2).start()
            try:
                place = folder / f"{variant}-{front.name}"
                place.mkdir()
                cell, seconds = await kernel.stop_when(front.call.format(url=server.url, dir=place), server,
                                                       PRESS_STOP_AT)
                figures[front.name] = (seconds, len(server.requests), error_name(cell) or "-")
            finally:
                server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request at the fake server")
    args = parser.parse_args()
    os.environ.pop("OLLAMA_HOST", None)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_RUNTIME_DIR"] = str(Path(tmp) / "jupyter-runtime")
        results = {variant: asyncio.run(measure(variant, args.rows, args.latency, Path(tmp)))
                   for variant in ("before", "after")}
    print(f"stop button -> kernel idle; {args.rows} rows, {args.latency * 1000:.0f} ms per request, 2 slots, "
          f"stop after {PRESS_STOP_AT} answers")
    print(f"{'front':<30} {'before: s':>10} {'sent':>6} {'raised':>18}   {'after: s':>9} {'sent':>6} {'raised':>18}")
    for front in FRONTS:
        b, a = results["before"][front.name], results["after"][front.name]
        print(f"{front.name:<30} {b[0]:>10.2f} {b[1]:>6} {b[2]:>18}   {a[0]:>9.2f} {a[1]:>6} {a[2]:>18}")


if __name__ == "__main__":
    main()
