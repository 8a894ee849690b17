"""Seeded percentile bootstrap over rows, drawn as counts of distinct answer patterns.

Resampling N rows with replacement is the same as drawing, for each distinct pattern of answers,
how many times it appears: a multinomial over the patterns with their observed frequencies. Every
statistic here is a sum over rows, so a replicate costs one multiply over the patterns (a few
dozen for labels) instead of a pass over the rows, and thousands of replicates take milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

#: Floats a chunk of replicates may hold at once (chunks keep memory flat for long tables).
CHUNK_BUDGET = 4_000_000


def patterns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of an int matrix and how often each occurs."""
    if len(rows) == 0:
        return rows.reshape(0, rows.shape[1]), np.zeros(0, dtype=np.int64)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return unique, counts.astype(np.int64)


def generator(seed: int | None, *names: str) -> np.random.Generator:
    """A generator for one statistic: the same seed and names give the same replicates whatever
    else is analysed alongside (another key or model changes nothing here)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, *(zlib.crc32(name.encode("utf-8")) for name in names)])


def replicates(frequencies: np.ndarray, n_boot: int, rng: np.random.Generator,
               width: int) -> Iterator[np.ndarray]:
    """Chunks of bootstrap counts (replicates × patterns), ``n_boot`` rows in all; ``width`` is how
    many floats the caller keeps per replicate (sizes the chunks)."""
    total = int(frequencies.sum())
    if total == 0 or n_boot <= 0:
        return
    p = frequencies / total
    chunk = max(1, CHUNK_BUDGET // max(1, width, len(frequencies)))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        yield rng.multinomial(total, p, size=size).astype(float)
        done += size


def interval(samples: np.ndarray, ci: float) -> tuple[float | None, float | None]:
    """The percentile interval of the defined replicates; None when fewer than 2 are defined."""
    finite = samples[np.isfinite(samples)]
    if len(finite) < 2:
        return None, None
    tail = 100 * (1 - ci) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)
