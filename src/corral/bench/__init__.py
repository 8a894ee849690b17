"""Measure and tune: per-model figures, concurrency sweeps with their knee, auto-tuned slots, GPU use.

`corral bench` and `batch_benchmark` are fronts over `api.bench_async`; `corral run --auto-tune`
uses `tune.auto_tune`. Sweeps run through the same engine as every job, so what they measure is
what a run gets.
"""

from __future__ import annotations

from .api import BenchResult, batch_benchmark, batch_benchmark_async, bench_async
from .sweep import Sweep, find_knee
from .tune import TuneResult, auto_tune

__all__ = ["BenchResult", "Sweep", "TuneResult", "auto_tune", "batch_benchmark", "batch_benchmark_async",
           "bench_async", "find_knee"]
