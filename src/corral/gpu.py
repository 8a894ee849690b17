"""GPU utilisation while a job runs, sampled with ``nvidia-smi`` into the store for the report.

Why from the client: a run's throughput only means something next to how busy the GPUs were, and the
servers' APIs do not say. ``nvidia-smi`` sees the GPUs of the machine corral runs on, which is where
the servers are for ``--local`` and single-host set-ups; with no ``nvidia-smi`` on PATH nothing is
sampled and the report leaves the figure out. ``CORRAL_GPU_INTERVAL`` sets the seconds between
samples (default 5; 0 turns sampling off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
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
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "GpuSampler":
        if self.binary:
            self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self.sample()  # one last point, so a short run still has its end

    def described(self) -> list[dict[str, Any]]:
        return [{"index": index, "name": name} for index, name in sorted(self.gpus.items())]

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        if not self.binary:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.info("cannot run nvidia-smi (%s); GPU sampling stops", exc)
            self.binary = None
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.info("nvidia-smi did not answer in 10 s; GPU sampling stops")
            self.binary = None
            return
        samples = parse_nvidia_smi(out.decode("utf-8", "replace"), time.time())
        for _, index, name, *_ in samples:
            self.gpus[index] = name
        if samples:
            self.store.record_gpu_samples(samples)
