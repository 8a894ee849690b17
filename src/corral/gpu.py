"""GPU utilisation while a job runs, sampled with ``nvidia-smi`` into the store for the report.

Why from the client: a run's throughput only means something next to how busy the GPUs were, and the
servers' APIs do not say. ``nvidia-smi`` sees the GPUs of the machine corral runs on, which is where
the servers are for ``--local`` and single-host set-ups; with no ``nvidia-smi`` on PATH nothing is
sampled and the report leaves the figure out. ``CORRAL_GPU_INTERVAL`` sets the seconds between
samples (default 5; 0 turns sampling off).

The sampler is a thread running ``subprocess.run``, not an asyncio subprocess: forking from the
event loop of a process that also has threads can hang in the child before ``exec`` (seen with
uvloop, about one run in fifty), while ``subprocess`` spawns safely from any thread. Samples are
handed to the event loop, which writes them to the store as the run goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Any

from .store import Store

log = logging.getLogger("corral")

QUERY = "index,name,utilization.gpu,memory.used,memory.total"
DEFAULT_INTERVAL = 5.0

Sample = tuple[float, int, str, float | None, float | None, float | None]


def parse_nvidia_smi(text: str, when: float) -> list[Sample]:
    """Rows of ``nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits``; "[N/A]" becomes None."""
    samples: list[Sample] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        utilization, used, total = (_number(c) for c in cells[2:])
        samples.append((when, int(cells[0]), cells[1], utilization, used, total))
    return samples


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


class GpuSampler:
    """``async with GpuSampler(store):`` samples every ``interval`` seconds until the block ends."""

    def __init__(self, store: Store, interval: float | None = None) -> None:
        self.store = store
        if interval is None:
            interval = float(os.environ.get("CORRAL_GPU_INTERVAL", DEFAULT_INTERVAL))
        self.interval = interval
        self.binary = shutil.which("nvidia-smi") if interval > 0 else None
        self.gpus: dict[int, str] = {}
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GpuSampler:
        if self.binary:
            self._thread = threading.Thread(target=self._sample_until_stopped, name="corral-gpu",
                                            daemon=True)
            self._thread.start()
            self._writer = asyncio.create_task(self._write_periodically())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 15)
        self._write()

    def described(self) -> list[dict[str, Any]]:
        return [{"index": index, "name": name} for index, name in sorted(self.gpus.items())]

    async def _write_periodically(self) -> None:
        while True:
            await asyncio.sleep(max(self.interval, 1.0))
            self._write()

    def _write(self) -> None:
        with self._lock:
            samples, self._samples = self._samples, []
        for _, index, name, *_ in samples:
            self.gpus[index] = name
        if samples:
            self.store.record_gpu_samples(samples)

    def _sample_until_stopped(self) -> None:
        while True:
            if not self._sample_once():
                return
            if self._stop.wait(self.interval):
                self._sample_once()  # one last point, so a short run still has its end
                return

    def _sample_once(self) -> bool:
        try:
            done = subprocess.run([self.binary or "nvidia-smi", f"--query-gpu={QUERY}",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.info("nvidia-smi failed (%s); GPU sampling stops", exc)
            return False
        samples = parse_nvidia_smi(done.stdout, time.time())
        with self._lock:
            self._samples.extend(samples)
        return True


NO_GPU_NOTE = "corral: no nvidia-smi on PATH; GPU monitoring off"


def gpu_series(store: Store, run_id: int | None = None) -> dict[tuple[int, str], list[tuple[float, float | None,
                                                                                          float | None]]]:
    """(GPU index, name) -> [(t, utilisation %, memory used MiB)] of one run (all runs for None)."""
    where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
    series: dict[tuple[int, str], list[tuple[float, float | None, float | None]]] = {}
    for gpu, name, t, utilization, memory in store.query(
            f"SELECT gpu, COALESCE(name, ''), t, utilization, memory_used FROM gpu_samples {where} "
            "ORDER BY gpu, t", params):
        series.setdefault((gpu, name), []).append((t, utilization, memory))
    return series


def gpu_summary(store: Store, run_id: int | None = None) -> list[dict[str, Any]]:
    """Per GPU: samples, mean and peak utilisation, peak memory used and the total, for a summary."""
    rows = store.query(
        "SELECT gpu, COALESCE(name, ''), COUNT(*), AVG(utilization), MAX(utilization), MAX(memory_used), "
        f"MAX(memory_total) FROM gpu_samples {'WHERE run_id = ?' if run_id is not None else ''} "
        "GROUP BY gpu ORDER BY gpu", (run_id,) if run_id is not None else ())
    return [{"gpu": g, "name": n, "samples": c, "utilization_mean": None if a is None else round(a, 1),
             "utilization_max": m, "memory_used_max": mem, "memory_total": tot}
            for g, n, c, a, m, mem, tot in rows]
