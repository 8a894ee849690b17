#!/usr/bin/env python3
"""corral's agreement figures next to the reference libraries' figures on the same data.

Prints figures; it is not a test. The data: three models rating ``--rows`` items (seeded) as a
fan-out run leaves them, with about 15% of answers missing per model (errored rows): a 1-5 rating
``stars`` (whole numbers, so ordinal when inferred), a score ``prob`` in [0, 1] with two decimals
(interval) and a label (nominal). (Two decimals because the reference package holds a rows ×
values × values array: with three decimals and 2000 rows it needs 16 GB and is killed.)
Then Krippendorff's own published example (4 observers, 12 units) and Fleiss'
1971 example (10 subjects, 14 raters), whose published values are printed alongside.

* Krippendorff's α at every level: ``corral.agreement(level=...)`` vs ``krippendorff.alpha``;
* Cohen's κ for every pair, unweighted, linear and quadratic: corral vs scikit-learn's
  ``cohen_kappa_score(labels=..., weights=...)`` on the rows both models answered;
* Fleiss' κ: corral vs statsmodels' ``fleiss_kappa`` on the rows all models answered;
* the bootstrap intervals (1000 resamples, seed 0) and how long corral's whole report takes, next
  to the time of one ``krippendorff.alpha`` call and a 1000-fold row bootstrap done with it.

Usage: .venv/bin/python benchmarks/agreement.py [--rows 2000]
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from corral import agreement

MODELS = ["llama3.2", "qwen3:8b", "gemma3"]


def fanout(rows: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, rows)
    data: dict[str, Any] = {}
    for model in MODELS:
        gone = rng.random(rows) < 0.15
        stars = np.clip(truth + rng.integers(-1, 2, rows), 1, 5).astype(float)
        prob = np.round(np.clip(truth / 5 + rng.normal(0, 0.1, rows), 0, 1), 2)
        label = np.where(stars >= 3, "positive", "negative").astype(object)
        stars[gone], prob[gone], label[gone] = np.nan, np.nan, None
        data[f"stars_{model}"], data[f"prob_{model}"], data[f"label_{model}"] = stars, prob, label
        data[f"response_{model}"] = ["{}"] * rows
    return pd.DataFrame(data)


def reference_alpha(df: pd.DataFrame, key: str, level: str) -> float:
    block = df[[f"{key}_{m}" for m in MODELS]]
    if key == "label":
        block = block.apply(lambda c: c.map({"negative": 0.0, "positive": 1.0}))
    return float(krippendorff.alpha(reliability_data=block.to_numpy(dtype=float).T, level_of_measurement=level))


def row(*cells: Any) -> None:
    print("  ".join(f"{c:>{w}}" if not isinstance(c, str) or c[:1].isdigit() or c[:1] == "-" else f"{c:<{w}}"
                    for c, w in zip(cells, (34, 12, 12, 10))))


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    df = fanout(args.rows)
    print(f"Data: {args.rows} rows, 3 models, {int(df.filter(like='stars_').isna().sum().sum())} of "
          f"{3 * args.rows} ratings missing\n")

    row("Krippendorff's α", "corral", "krippendorff", "|diff|")
    for key, levels in (("label", ["nominal"]), ("stars", ["nominal", "ordinal", "interval", "ratio"]),
                        ("prob", ["ordinal", "interval", "ratio"])):
        for level in levels:
            ours = agreement(df, key=key, level=level, n_boot=0).keys[key].alpha
            ref = reference_alpha(df, key, level)
            row(f"{key} ({level})", fmt(ours), fmt(ref), f"{abs((ours or 0) - ref):.1e}")

    print()
    row("Cohen's κ (stars)", "corral", "scikit-learn", "|diff|")
    for weights in ("none", "linear", "quadratic"):
        pairs = agreement(df, key="stars", weights=weights, n_boot=0).keys["stars"].pairs
        for rec, (a, b) in zip(pairs.to_dict("records"), combinations(MODELS, 2)):
            ya, yb = df[f"stars_{a}"], df[f"stars_{b}"]
            both = ya.notna() & yb.notna()
            ref = cohen_kappa_score(ya[both], yb[both], labels=[1.0, 2.0, 3.0, 4.0, 5.0],
                                    weights=None if weights == "none" else weights)
            row(f"{a} × {b} ({weights})", fmt(rec["cohen_kappa"]), fmt(ref), f"{abs(rec['cohen_kappa'] - ref):.1e}")

    print()
    row("Fleiss' κ (rows all answered)", "corral", "statsmodels", "|diff|")
    for key in ("label", "stars"):
        ka = agreement(df, key=key, n_boot=0).keys[key]
        block = df[[f"{key}_{m}" for m in MODELS]].dropna().astype(str).to_numpy()
        ref = fleiss_kappa(aggregate_raters(block)[0], method="fleiss")
        row(f"{key} ({ka.n_complete} rows)", fmt(ka.fleiss_kappa), fmt(ref), f"{abs(ka.fleiss_kappa - ref):.1e}")

    print()
    row("Published examples", "corral", "reference", "published")
    n = np.nan
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
                 [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    book = pd.DataFrame({f"v_{i}": o for i, o in enumerate(observers)})
    for level, published in (("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)):
        ours = agreement(book, key="v", level=level, n_boot=0).keys["v"].alpha
        ref = krippendorff.alpha(reliability_data=np.array(observers), level_of_measurement=level)
        row(f"Krippendorff 2011 α ({level})", fmt(ours), fmt(ref), f"{published:.3f}")
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    answers = [[f"c{j}" for j, count in enumerate(r) for _ in range(count)] for r in table]
    fleiss = pd.DataFrame({f"c_r{r}": [a[r] for a in answers] for r in range(14)})
    ours = agreement(fleiss, key="c", n_boot=0).keys["c"].fleiss_kappa
    row("Fleiss 1971 κ (14 raters)", fmt(ours), fmt(fleiss_kappa(np.array(table))), "0.210")

    print()
    start = time.perf_counter()
    report = agreement(df, n_boot=1000, seed=0)
    ours_s = time.perf_counter() - start
    print(f"95% bootstrap intervals (1000 resamples of the rows, seed 0), all three keys in {ours_s:.2f} s:")
    frame = report.to_frame()
    for rec in frame[frame.scope == "all"].to_dict("records"):
        print(f"  {rec['key']:<6} {rec['level']:<9} α = {rec['alpha']:.3f}  [{rec['alpha_low']:.3f}, "
              f"{rec['alpha_high']:.3f}]")
    data = df[[f"prob_{m}" for m in MODELS]].to_numpy(dtype=float).T
    start = time.perf_counter()
    krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    one = time.perf_counter() - start
    print(f"krippendorff.alpha once on 'prob' (interval, {len(np.unique(data[~np.isnan(data)]))} distinct "
          f"values): {one:.3f} s, so a 1000-fold bootstrap with it ≈ {1000 * one:.0f} s")


if __name__ == "__main__":
    main()
