"""Krippendorff's α at every level of measurement, vectorised over bootstrap replicates.

α = 1 - (n - 1) · Σ_ck o_ck δ_ck / Σ_ck n_c n_k δ_ck, where o is the coincidence matrix (each row
answered by m ≥ 2 models adds 1/(m - 1) per ordered pair of its answers), n_c the pairable answers
with value c, and δ the level's distance: nominal (c ≠ k), ordinal (the answers ranked between c
and k, Krippendorff's rank metric), interval ((c - k)²), ratio (((c - k) / (c + k))²).

This is the definition the `krippendorff` package implements, and the tests compare every level
against ``krippendorff.alpha(level_of_measurement=...)``. It is computed here rather than by the
package because the package builds a rows × values × values array (a 20,000-row ``prob`` column
with 500 distinct values would need 40 GB), and because the bootstrap needs it for thousands of
resamples at once: rows are grouped into distinct answer patterns, and each replicate is a count
per pattern.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from . import resample


def alpha(codes: np.ndarray, values: np.ndarray, level: str, *, n_boot: int = 0, ci: float = 0.95,
          rng: np.random.Generator | None = None) -> tuple[float | None, float | None, float | None]:
    """α over the rows answered by two or more models (codes: rows × models, -1 = no answer)."""
    pairable = codes[(codes >= 0).sum(axis=1) >= 2]
    units, freq = resample.patterns(pairable)
    if len(units) == 0:
        return None, None, None
    parts = _Parts(units, values, level)
    point = parts.alpha(freq[np.newaxis, :].astype(float))[0]
    low = high = None
    if n_boot > 0 and rng is not None:
        samples = np.concatenate([parts.alpha(counts) for counts in
                                  resample.replicates(freq, n_boot, rng, parts.width)])
        low, high = resample.interval(samples, ci)
    return (None if not np.isfinite(point) else float(point)), low, high


class _Parts:
    """What each answer pattern contributes, so α for any pattern counts is a few products."""

    def __init__(self, units: np.ndarray, values: np.ndarray, level: str) -> None:
        self.level, self.values, self.size = level, values, len(values)
        answered = units >= 0
        self.m = answered.sum(axis=1).astype(float)
        rows, cols = np.nonzero(answered)
        self.value_counts = sparse.csr_matrix((np.ones(len(rows)), (rows, units[rows, cols])),
                                              shape=(len(units), self.size))
        models = units.shape[1]
        pair_rows, pair_a, pair_b = [], [], []
        for i in range(models):
            for j in range(models):
                if i != j:
                    both = np.nonzero(answered[:, i] & answered[:, j])[0]
                    pair_rows.append(both)
                    pair_a.append(units[both, i])
                    pair_b.append(units[both, j])
        r, a, b = np.concatenate(pair_rows), np.concatenate(pair_a), np.concatenate(pair_b)
        weight = 1.0 / (self.m[r] - 1)
        if level == "ordinal":
            # The rank metric depends on the totals, so keep each pattern's coincidences.
            self.coincidences = sparse.csr_matrix((weight, (r, a * self.size + b)),
                                                  shape=(len(units), self.size * self.size))
            self.width = self.size * self.size
        else:
            self.observed = np.bincount(r, weights=weight * self._delta(a, b), minlength=len(units))
            self.width = 2 * self.size
        if level == "ratio":
            self.matrix = self._delta(np.arange(self.size)[:, None], np.arange(self.size)[None, :])

    def _delta(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.level == "nominal":
            return (a != b).astype(float)
        x, y = self.values[a], self.values[b]
        if self.level == "interval":
            return (x - y) ** 2
        total = x + y
        return np.divide(x - y, total, out=np.zeros(np.broadcast(x, y).shape), where=total != 0) ** 2

    def alpha(self, counts: np.ndarray) -> np.ndarray:
        """α per replicate; counts is replicates × patterns."""
        totals = np.asarray(counts @ self.value_counts)          # n_c per replicate
        n = totals.sum(axis=1)
        if self.level == "ordinal":
            o = np.asarray(counts @ self.coincidences).reshape(len(counts), self.size, self.size)
            delta = _rank_distances(totals)
            observed = np.einsum("bck,bck->b", o, delta)
            expected = np.einsum("bc,bck,bk->b", totals, delta, totals)
        else:
            observed = counts @ self.observed
            if self.level == "nominal":
                expected = n**2 - np.sum(totals**2, axis=1)
            elif self.level == "interval":
                # Σ n_c n_k (x_c - x_k)² = 2 (n S2 - S1²), on values centred so nothing cancels.
                centred = self.values - self.values.mean()
                s1, s2 = totals @ centred, totals @ centred**2
                expected = 2 * (n * s2 - s1**2)
            else:
                expected = np.einsum("bc,ck,bk->b", totals, self.matrix, totals)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = 1.0 - (n - 1) * observed / expected
        # Undefined when the pairable answers hold a single value: nothing to expect or disagree on.
        return np.where((totals > 0).sum(axis=1) >= 2, result, np.nan)


def _rank_distances(totals: np.ndarray) -> np.ndarray:
    """Krippendorff's ordinal δ_ck = (Σ_{g=c..k} n_g - (n_c + n_k) / 2)², per replicate."""
    cum = np.cumsum(totals, axis=1)
    c, k = np.arange(totals.shape[1])[:, None], np.arange(totals.shape[1])[None, :]
    lo, hi = np.minimum(c, k), np.maximum(c, k)
    between = cum[:, hi] - cum[:, lo] + totals[:, lo]
    return (between - (totals[:, lo] + totals[:, hi]) / 2) ** 2
