"""One key's agreement: pairwise κ and percent agreement, α, Fleiss' κ, confusions, gold scores."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from . import kappa as kappas
from .alpha import alpha as krippendorff_alpha
from .record import KeyAgreement
from .resample import generator
from .scale import Scale, build_scale, gold_values, label_sort_key

#: Confusion tables are kept for keys whose models used at most this many values (a 50 × 50 table
#: of free text or scores says nothing a reader can see).
MAX_CONFUSION_LABELS = 30


@dataclass(frozen=True)
class Options:
    """How every key is scored (the keyword arguments of `agreement`)."""

    normalize: bool
    weights: str | None
    ci: float | None
    n_boot: int
    seed: int | None


def analyse_key(df: pd.DataFrame, key: str, models: list[str], gold_column: str | None,
                level: str | None, opts: Options) -> KeyAgreement:
    columns = [f"{key}_{m}" for m in models]
    block = df[columns]
    scale = build_scale(block, level, opts.normalize, key)
    weights = opts.weights or kappas.DEFAULT_WEIGHTS[scale.level]
    if scale.level == "nominal":
        weights = "none"   # labels have no order for a weight to measure
    notes: list[str] = []
    codes = scale.codes
    answered = codes >= 0
    used = scale.used()
    for j, model in enumerate(models):
        if not answered[:, j].any():
            notes.append(f"{model} answered no row for {key!r}")
    boot = opts.n_boot if opts.ci else 0
    ci = opts.ci or 0.95
    rows, confusion = [], {}
    show_confusion = scale.level in ("nominal", "ordinal") and len(used) <= MAX_CONFUSION_LABELS
    for (i, a), (j, b) in combinations(enumerate(models), 2):
        both = answered[:, i] & answered[:, j]
        ca, cb = codes[both, i], codes[both, j]
        row: dict[str, Any] = {"model_a": a, "model_b": b, "n": int(both.sum()), "percent_agreement": None,
                               "cohen_kappa": None, "kappa_low": None, "kappa_high": None}
        if row["n"] == 0:
            notes.append(f"{a} and {b} answered no row in common: nothing to compare")
        else:
            row["percent_agreement"] = 100.0 * float(np.mean(ca == cb))
            row["cohen_kappa"], row["kappa_low"], row["kappa_high"] = kappas.cohen(
                ca, cb, len(scale.points), weights, n_boot=boot, ci=ci,
                rng=generator(opts.seed, "kappa", key, a, b))
            if row["cohen_kappa"] is None:
                only = [scale.points[c] for c in sorted(set(ca.tolist()) | set(cb.tolist()))]
                notes.append(f"Cohen's κ is undefined for {a} vs {b}: both gave only {_fmt_labels(only)} "
                             f"on the {row['n']} rows compared (no variation to correct for chance); "
                             f"percent agreement is still reported")
        rows.append(row)
        if show_confusion:
            confusion[(a, b)] = _confusion(ca, cb, a, b, scale)
    if not show_confusion and scale.level in ("nominal", "ordinal"):
        notes.append(f"no confusion tables: the models gave {len(used)} different values "
                     f"(tables are kept up to {MAX_CONFUSION_LABELS})")
    pairs = pd.DataFrame(rows, columns=["model_a", "model_b", "n", "percent_agreement", "cohen_kappa",
                                        "kappa_low", "kappa_high"])
    pairs["n"] = pairs["n"].astype("int64")
    value, low, high = _alpha(scale, used, notes, boot, ci, opts.seed, key)
    fleiss = None
    if len(models) > 2 and scale.level in ("nominal", "ordinal"):
        fleiss = kappas.fleiss(codes, len(scale.points))
        if fleiss is None and answered.all(axis=1).any():
            notes.append("Fleiss' κ is undefined: every model gave the same single value")
    result = KeyAgreement(
        key=key, models=models, columns=columns, n_rows=len(df),
        n_complete=int(answered.all(axis=1).sum()), n_alpha=int((answered.sum(axis=1) >= 2).sum()),
        labels=[scale.points[c] for c in used], pairs=pairs, alpha=value, confusion=confusion,
        level=scale.level, level_inferred=scale.inferred, weights=weights, alpha_low=low, alpha_high=high,
        fleiss_kappa=fleiss, notes=notes)
    if gold_column is not None:
        result.gold_column = gold_column
        result.gold = _gold_scores(scale, df[gold_column], models, opts.normalize, notes)
    return result


def _alpha(scale: Scale, used: list[int], notes: list[str], boot: int, ci: float, seed: int | None,
           key: str) -> tuple[float | None, float | None, float | None]:
    if len(used) < 2:
        shown = _fmt_labels([scale.points[c] for c in used]) if used else "no labels"
        notes.append(f"Krippendorff's α is undefined: fewer than 2 distinct values ({shown})")
        return None, None, None
    if not ((scale.codes >= 0).sum(axis=1) >= 2).any():
        notes.append("Krippendorff's α is undefined: no row was answered by 2 or more models")
        return None, None, None
    value, low, high = krippendorff_alpha(scale.codes, scale.values, scale.level, n_boot=boot, ci=ci,
                                          rng=generator(seed, "alpha", key))
    if value is None:
        notes.append("Krippendorff's α is undefined: the rows answered by 2 or more models hold a "
                     "single value")
    return value, low, high


def _confusion(ca: np.ndarray, cb: np.ndarray, name_a: str, name_b: str, scale: Scale) -> pd.DataFrame:
    """Counts of (value by A, value by B), square over the values either model gave here."""
    here = sorted(set(ca.tolist()) | set(cb.tolist()))
    position = {c: i for i, c in enumerate(here)}
    counts = np.zeros((len(here), len(here)), dtype=np.int64)
    np.add.at(counts, ([position[c] for c in ca.tolist()], [position[c] for c in cb.tolist()]), 1)
    labels = [scale.points[c] for c in here]
    table = pd.DataFrame(counts, index=pd.Index(labels, name=name_a, dtype=object),
                         columns=pd.Index(labels, name=name_b, dtype=object))
    return table


def _gold_scores(scale: Scale, gold: pd.Series, models: list[str], normalize: bool,
                 notes: list[str]) -> pd.DataFrame:
    """Accuracy and macro-F1 (labels and ranks) or mean absolute error (numbers) of each model
    against the reference labels, on the rows where both exist."""
    from sklearn.metrics import f1_score

    truth = gold_values(gold, scale, normalize)
    rows = []
    for j, model in enumerate(models):
        pairs = [(t, scale.points[c]) for t, c in zip(truth, scale.codes[:, j].tolist())
                 if t is not None and c >= 0]
        row: dict[str, Any] = {"model": model, "n": len(pairs), "accuracy": None, "macro_f1": None,
                               "mae": None}
        if not pairs:
            notes.append(f"{model}: no row has both an answer and a {gold.name!r} label")
        else:
            yt, yp = [t for t, _ in pairs], [p for _, p in pairs]
            row["accuracy"] = float(np.mean([t == p for t, p in pairs]))
            if scale.level in ("nominal", "ordinal"):
                # One label per value: 3 (a model's answer) and 3.0 (a gold cell) are the same class.
                as_label = float if scale.numeric else str
                labels = sorted({as_label(v) for v in yt + yp}, key=label_sort_key)
                index = {label: i for i, label in enumerate(labels)}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row["macro_f1"] = float(f1_score([index[as_label(v)] for v in yt],
                                                     [index[as_label(v)] for v in yp],
                                                     average="macro", zero_division=0))
            if scale.numeric:
                row["mae"] = float(np.mean(np.abs(np.array(yt, dtype=float) - np.array(yp, dtype=float))))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["model", "n", "accuracy", "macro_f1", "mae"])
    frame["n"] = frame["n"].astype("int64")
    if not scale.numeric:
        frame = frame.drop(columns="mae")
    return frame


def _fmt_labels(labels: list[Any]) -> str:
    return ", ".join(repr(v) for v in labels[:5]) + (" ..." if len(labels) > 5 else "")
