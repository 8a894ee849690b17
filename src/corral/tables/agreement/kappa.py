"""Cohen's κ (unweighted, linear, quadratic) for two models, and Fleiss' κ for three or more.

κ is computed from answer patterns, vectorised over bootstrap replicates, with the definitions of
scikit-learn's ``cohen_kappa_score(labels=scale, weights=...)``: weights are distances between
positions on the key's scale (for a whole-number scale, the filled-in range, so position distance
is value distance). The tests check every figure against scikit-learn and statsmodels.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from . import resample

WEIGHTS = ("none", "linear", "quadratic")
#: The weights a level gets when none are asked for: order matters from ordinal up.
DEFAULT_WEIGHTS = {"nominal": "none", "ordinal": "linear", "interval": "quadratic", "ratio": "quadratic"}


def distance(a: np.ndarray, b: np.ndarray, weights: str) -> np.ndarray:
    """Disagreement weight between scale positions ``a`` and ``b`` (0 on agreement)."""
    if weights == "linear":
        return np.abs(a - b).astype(float)
    if weights == "quadratic":
        return ((a - b) ** 2).astype(float)
    return (a != b).astype(float)


def cohen(a: np.ndarray, b: np.ndarray, size: int, weights: str, *, n_boot: int = 0, ci: float = 0.95,
          rng: np.random.Generator | None = None) -> tuple[float | None, float | None, float | None]:
    """κ on rows both answered (codes ``a``, ``b`` in 0..size-1), and its bootstrap interval."""
    pairs, freq = resample.patterns(np.column_stack([a, b]))
    if len(pairs) == 0:
        return None, None, None
    pa, pb = pairs[:, 0], pairs[:, 1]
    point = _kappa(freq[np.newaxis, :].astype(float), pa, pb, size, weights)[0]
    low = high = None
    if n_boot > 0 and rng is not None:
        samples = np.concatenate([_kappa(counts, pa, pb, size, weights)
                                  for counts in resample.replicates(freq, n_boot, rng, 2 * size)])
        low, high = resample.interval(samples, ci)
    return (None if not np.isfinite(point) else float(point)), low, high


def _kappa(counts: np.ndarray, pa: np.ndarray, pb: np.ndarray, size: int, weights: str) -> np.ndarray:
    """κ per replicate: counts is (replicates × patterns) over the (a, b) patterns."""
    n = counts.sum(axis=1)
    observed = counts @ distance(pa, pb, weights) / n
    rows = _marginal(counts, pa, size) / n[:, np.newaxis]
    cols = _marginal(counts, pb, size) / n[:, np.newaxis]
    if weights == "none":
        expected = 1.0 - np.sum(rows * cols, axis=1)
    elif weights == "quadratic":
        pos = np.arange(size, dtype=float)
        expected = rows @ pos**2 + cols @ pos**2 - 2 * (rows @ pos) * (cols @ pos)
    else:  # E|X - Y| for independent X, Y on 0..size-1: Σ_k F_X(k)(1 - F_Y(k)) + F_Y(k)(1 - F_X(k))
        fr, fc = np.cumsum(rows, axis=1)[:, :-1], np.cumsum(cols, axis=1)[:, :-1]
        expected = np.sum(fr * (1 - fc) + fc * (1 - fr), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = 1.0 - observed / expected
    # Undefined (scikit-learn gives NaN) when both models gave one and the same value throughout.
    return np.where(((rows + cols) > 0).sum(axis=1) >= 2, kappa, np.nan)


def _marginal(counts: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """How often each scale position occurs, per replicate (replicates × size)."""
    return np.asarray(counts @ one_hot(codes, size))


def one_hot(codes: np.ndarray, size: int) -> sparse.csr_matrix:
    """patterns × size, a 1 at each pattern's code (sparse: a scale may have thousands of points)."""
    return sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), size))


def fleiss(codes: np.ndarray, size: int) -> float | None:
    """Fleiss' κ on the rows every model answered (codes: rows × models, -1 = no answer).

    P_i = Σ_j n_ij (n_ij - 1) / (m (m - 1)) is the share of agreeing model pairs on row i;
    p_j is the share of all answers in category j; κ = (P̄ - Σ p_j²) / (1 - Σ p_j²).
    """
    complete = codes[(codes >= 0).all(axis=1)]
    rows, m = complete.shape
    if rows == 0 or m < 2:
        return None
    counts = np.zeros((rows, size))
    for j in range(m):
        np.add.at(counts, (np.arange(rows), complete[:, j]), 1.0)
    p_bar = float(np.mean((counts * (counts - 1)).sum(axis=1) / (m * (m - 1))))
    share = counts.sum(axis=0) / (rows * m)
    chance = float(np.sum(share**2))
    if chance >= 1 - 1e-12:
        return None
    return (p_bar - chance) / (1 - chance)
