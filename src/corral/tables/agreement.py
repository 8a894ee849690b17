"""Inter-model agreement for fan-out runs: Cohen's κ, percent agreement, Krippendorff's α, gold scores.

A fan-out run (``run_analysis(..., model_names=[...], fanout=True)``) leaves one column per model
and JSON key, named ``{key}_{model}`` (``label_llama3.2``, ``label_qwen3:8b``), plus
``response_{model}`` and ``error_{model}``. Researchers then ask "do the models agree, and how
well does each match my hand coding?" - this module answers that from the frame alone.

Model names may contain ``.``, ``:``, ``/`` and ``-`` (and ``_``), so columns are never split on a
separator: a column belongs to ``key`` when it is exactly ``f"{key}_{model}"`` for a known model.
Models are known from ``models=`` or, failing that, from the ``response_*`` / ``error_*`` columns a
fan-out run always writes; only when neither exists are they guessed from the column names.

Labels are normalised before comparison (``normalize=True``, the default) because models write
the same answer differently: whitespace is stripped, text is case-folded (``" Positive"`` and
``"positive"`` agree), ``true``/``True``/``"TRUE"`` are the same label, ``1`` and ``1.0`` are the
same label, and an empty string counts as no answer. Every label is then compared as text.
``normalize=False`` compares the raw values (``1 == 1.0`` still holds, as in Python; booleans
become the text ``True``/``False`` so that ``True`` and ``1`` stay different labels).

Missing answers (NaN/None, e.g. the model errored on that row) are never guessed: pairwise
statistics use the rows both models answered, and Krippendorff's α treats them as missing, which
its definition supports natively.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError

#: Columns a fan-out run writes per model that are never answers to compare.
META_PREFIXES = ("response", "error")
#: An integer-valued key with at most this many distinct values counts as categorical.
MAX_INTEGER_LEVELS = 20
_MISSING = object()


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class KeyAgreement:
    """Agreement statistics for one JSON key across the models that answered it."""

    key: str
    models: list[str]
    columns: list[str]
    n_rows: int                  # rows in the frame
    n_complete: int              # rows every model answered
    n_alpha: int                 # rows answered by ≥ 2 models: the units α is computed on
    labels: list[Any]            # every (normalised) label seen, sorted
    # model_a, model_b, n, percent_agreement (0-100), cohen_kappa; undefined values are NaN here
    # and None in to_dict()
    pairs: pd.DataFrame
    alpha: float | None          # Krippendorff's α (nominal) across all models
    confusion: dict[tuple[str, str], pd.DataFrame]
    gold: pd.DataFrame | None = None   # model, n, accuracy, macro_f1
    gold_column: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class AgreementReport:
    """Agreement for every key analysed; `render()` for people, `to_frame()`/`to_dict()` for code."""

    keys: dict[str, KeyAgreement]
    normalize: bool = True

    def to_frame(self) -> pd.DataFrame:
        """One tidy long table: a row per (key, model pair), plus one ``scope="all"`` α row per key."""
        rows: list[dict[str, Any]] = []
        for key, ka in self.keys.items():
            for rec in ka.pairs.to_dict("records"):
                rows.append({"key": key, "scope": "pair", **rec, "alpha": None})
            rows.append({"key": key, "scope": "all", "model_a": None, "model_b": None,
                         "n": ka.n_alpha, "percent_agreement": None, "cohen_kappa": None,
                         "alpha": ka.alpha})
        columns = ["key", "scope", "model_a", "model_b", "n", "percent_agreement", "cohen_kappa",
                   "alpha"]
        frame = pd.DataFrame(rows, columns=columns)
        for name in ("percent_agreement", "cohen_kappa", "alpha"):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        frame["n"] = frame["n"].astype("int64")
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (NaN/None become null, numpy numbers become Python ones)."""
        return {"normalize": self.normalize,
                "keys": {key: _key_to_dict(ka) for key, ka in self.keys.items()}}

    def render(self, confusion: bool = False) -> Any:
        """A `rich` renderable: per key, the pairwise table, α, gold scores and (optionally) confusions."""
        from rich.console import Group

        parts: list[Any] = []
        for ka in self.keys.values():
            parts.extend(_render_key(ka, confusion))
        return Group(*parts)

    def __rich__(self) -> Any:
        return self.render()


# --------------------------------------------------------------------------------------------
# Entry point


def agreement(df: pd.DataFrame, key: str | Sequence[str] | None = None,
              models: Sequence[str] | None = None, gold: str | Mapping[str, str] | None = None,
              *, normalize: bool = True) -> AgreementReport:
    """How much the models of a fan-out run agree with each other (and with a gold column).

    ``key``: one key or several; ``None`` analyses every categorical key found (text, booleans,
    categories, or integers with few distinct values - float keys such as ``prob`` are skipped
    unless named). ``models`` restricts and orders the models (default: all found, in column
    order). ``gold``: a column of reference labels (hand coding) used for every key, or a
    ``{key: column}`` mapping. ``normalize``: see the module docstring.

    Raises `UsageError` when a key has fewer than two model columns, or a named column is missing.
    """
    if not isinstance(df, pd.DataFrame):
        raise UsageError(f"agreement() needs a pandas DataFrame, not {type(df).__name__}")
    model_list = list(models) if models is not None else None
    if model_list is not None and len(set(model_list)) != len(model_list):
        raise UsageError(f"models lists a model twice: {', '.join(model_list)}")
    if model_list is not None and len(model_list) < 2:
        raise UsageError(f"agreement needs at least 2 models; got {', '.join(model_list) or 'none'}")
    gold_map = _gold_map(df, gold)
    exclude = set(gold_map.values())
    keys = _resolve_keys(df, key, model_list, exclude)
    stray = [k for k in gold_map if k != "*" and k not in keys]
    if stray:
        raise UsageError(f"gold columns given for key(s) not analysed: {', '.join(stray)} "
                         f"(keys analysed: {', '.join(keys)})")
    results: dict[str, KeyAgreement] = {}
    for k in keys:
        found = _key_models(df, k, model_list, exclude)
        gold_column = gold_map.get(k, gold_map.get("*"))
        results[k] = _analyse_key(df, k, found, gold_column, normalize)
    return AgreementReport(keys=results, normalize=normalize)


# --------------------------------------------------------------------------------------------
# Finding the columns


def _gold_map(df: pd.DataFrame, gold: str | Mapping[str, str] | None) -> dict[str, str]:
    """``{key: gold column}``; ``"*"`` stands for "every key" when a single column was given."""
    if gold is None:
        return {}
    mapping = {"*": gold} if isinstance(gold, str) else dict(gold)
    for column in mapping.values():
        if column not in df.columns:
            raise UsageError(f"gold column {column!r} is not in the data "
                             f"(columns: {_short_list(map(str, df.columns))})")
    return mapping


def _known_models(df: pd.DataFrame) -> list[str]:
    """Models named by the ``response_*`` / ``error_*`` columns a fan-out run writes, in order."""
    found: list[str] = []
    for column in map(str, df.columns):
        for prefix in META_PREFIXES:
            if column.startswith(prefix + "_") and len(column) > len(prefix) + 1:
                model = column[len(prefix) + 1:]
                if model not in found:
                    found.append(model)
    return found


def _key_models(df: pd.DataFrame, key: str, models: list[str] | None,
                exclude: set[str]) -> list[str]:
    """The models with a ``{key}_{model}`` column, in the requested or column order (≥ 2 needed)."""
    columns = [str(c) for c in df.columns if str(c) not in exclude]
    prefix = f"{key}_"
    candidates = [c[len(prefix):] for c in columns if c.startswith(prefix) and len(c) > len(prefix)]
    if models is not None:
        missing = [m for m in models if f"{key}_{m}" not in columns]
        if missing:
            raise UsageError(f"no column {', '.join(repr(f'{key}_{m}') for m in missing)} for key "
                             f"{key!r}; columns for it: {_short_list(prefix + c for c in candidates)}")
        found = list(models)
    else:
        known = _known_models(df)
        if known:
            found = [m for m in candidates if m in known]
        else:
            # No fan-out markers: a column "label_conf_a" next to "label_a" belongs to key
            # "label_conf", not to a model "conf_a" of key "label".
            found = [m for m in candidates
                     if not any(m != o and m.endswith("_" + o) for o in candidates)]
    if not found:
        raise UsageError(f"no columns for key {key!r} (expected {key}_<model>); keys found: "
                         f"{_short_list(_available_keys(df, exclude))}")
    if len(found) < 2:
        shown = _short_list(prefix + m for m in found) if found else "none"
        raise UsageError(f"agreement needs at least 2 models' columns for key {key!r} "
                         f"(columns named {key}_<model>); found: {shown}")
    return found


def _available_keys(df: pd.DataFrame, exclude: set[str]) -> list[str]:
    """Every ``{key}`` with a ``{key}_{model}`` column for a known model (for error messages)."""
    found: list[str] = []
    for model in _known_models(df):
        for column in map(str, df.columns):
            key = column[: -len(model) - 1]
            if (column not in exclude and column.endswith(f"_{model}") and key
                    and key not in META_PREFIXES and key not in found):
                found.append(key)
    return found


def _resolve_keys(df: pd.DataFrame, key: str | Sequence[str] | None, models: list[str] | None,
                  exclude: set[str]) -> list[str]:
    """The keys to analyse: the ones named, or every categorical fan-out key found."""
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        if not keys:
            raise UsageError("no key given")
        return list(dict.fromkeys(keys))
    model_names = models if models is not None else _known_models(df)
    if not model_names:
        raise UsageError("cannot tell which columns are model answers (no response_<model> or "
                         "error_<model> columns): name the key or the models")
    per_key: dict[str, list[str]] = {}
    for column in map(str, df.columns):
        if column in exclude:
            continue
        for model in model_names:
            suffix = f"_{model}"
            if column.endswith(suffix) and len(column) > len(suffix):
                per_key.setdefault(column[: -len(suffix)], []).append(column)
    if models is not None:
        absent = [m for m in models if not any(c.endswith(f"_{m}") for cs in per_key.values()
                                                for c in cs)]
        if absent:
            raise UsageError(f"no columns for model(s) {', '.join(absent)} (expected "
                             f"<key>_<model>, e.g. label_{absent[0]})")
    per_key = {k: cols for k, cols in per_key.items() if k not in META_PREFIXES}
    keys = [k for k, cols in per_key.items() if len(cols) >= 2 and _is_categorical(df[cols])]
    if not keys and per_key and all(len(cols) < 2 for cols in per_key.values()):
        raise UsageError("agreement needs at least 2 models' columns for a key ({key}_<model>); "
                         f"found only: {_short_list(c for cs in per_key.values() for c in cs)}")
    if not keys:
        raise UsageError(f"no categorical answer columns ({{key}}_<model>) found for models "
                         f"{_short_list(model_names)}: name the key to analyse")
    return keys


def _is_categorical(block: pd.DataFrame) -> bool:
    """Labels (text, booleans, categories, few-valued integers), not scores such as ``prob``."""
    values: list[Any] = []
    for name in block.columns:
        column = block[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(column):
            return True
        values.extend(v for v in column.tolist() if not _is_missing(v))
    if not values:
        return False
    if any(isinstance(v, (str, bool, np.bool_)) for v in values):
        return True
    numbers = [v for v in values if isinstance(v, (int, float, np.integer, np.floating))]
    if len(numbers) < len(values):
        return True  # lists, dicts and the like: compare as labels
    if not all(float(v).is_integer() for v in numbers):
        return False
    return len(set(numbers)) <= MAX_INTEGER_LEVELS


# --------------------------------------------------------------------------------------------
# Labels


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return False


def _normalise(value: Any, normalize: bool) -> Any:
    """One answer as a hashable label, or `_MISSING` (see the module docstring for the rules)."""
    if _is_missing(value):
        return _MISSING
    if isinstance(value, (list, dict, tuple, np.ndarray)):
        value = json.dumps(value.tolist() if isinstance(value, np.ndarray) else value,
                           sort_keys=True, default=str)
    elif isinstance(value, np.generic):
        value = value.item()
    if not normalize:
        # Python would make True and 1 the same label; as text they stay apart.
        return str(value) if isinstance(value, bool) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value).strip().casefold()
    return text if text else _MISSING


def _label_sort_key(label: Any) -> tuple[int, Any]:
    """Numbers in numeric order ("2" before "10"), then everything else as text."""
    try:
        return (0, float(label))
    except (TypeError, ValueError):
        return (1, str(label))


def _label_block(df: pd.DataFrame, columns: list[str], normalize: bool) -> pd.DataFrame:
    """The answer columns as normalised labels (object dtype, None for missing)."""
    out = {}
    for column in columns:
        labels = [_normalise(v, normalize) for v in df[column].tolist()]
        out[column] = pd.Series([None if v is _MISSING else v for v in labels],
                                index=df.index, dtype=object)
    return pd.DataFrame(out, index=df.index)


# --------------------------------------------------------------------------------------------
# Statistics


def _analyse_key(df: pd.DataFrame, key: str, models: list[str], gold_column: str | None,
                 normalize: bool) -> KeyAgreement:
    columns = [f"{key}_{m}" for m in models]
    block = _label_block(df, columns, normalize)
    block.columns = models
    labels = sorted({v for m in models for v in block[m] if v is not None}, key=_label_sort_key)
    notes: list[str] = []
    answered = block.notna()
    for model in models:
        if not answered[model].any():
            notes.append(f"{model} answered no row for {key!r}")
    pair_rows, confusion = [], {}
    for a, b in combinations(models, 2):
        row, table = _pair(block[a], block[b], a, b, labels, notes)
        pair_rows.append(row)
        confusion[(a, b)] = table
    pairs = pd.DataFrame(pair_rows, columns=["model_a", "model_b", "n", "percent_agreement",
                                             "cohen_kappa"])
    pairs["n"] = pairs["n"].astype("int64")
    alpha = _alpha(block, labels, notes)
    result = KeyAgreement(
        key=key, models=models, columns=columns, n_rows=len(df),
        n_complete=int(answered.all(axis=1).sum()),
        n_alpha=int((answered.sum(axis=1) >= 2).sum()), labels=labels, pairs=pairs, alpha=alpha,
        confusion=confusion, notes=notes)
    if gold_column is not None:
        result.gold_column = gold_column
        result.gold = _gold_scores(block, df[gold_column], models, normalize, notes)
    return result


def _pair(a: pd.Series, b: pd.Series, name_a: str, name_b: str, labels: list[Any],
          notes: list[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Percent agreement, Cohen's κ and a confusion table on the rows both models answered."""
    both = a.notna() & b.notna()
    va, vb = a[both].tolist(), b[both].tolist()
    n = len(va)
    row: dict[str, Any] = {"model_a": name_a, "model_b": name_b, "n": n,
                           "percent_agreement": None, "cohen_kappa": None}
    if n == 0:
        notes.append(f"{name_a} and {name_b} answered no row in common: nothing to compare")
        return row, pd.DataFrame()
    row["percent_agreement"] = 100.0 * sum(x == y for x, y in zip(va, vb)) / n
    row["cohen_kappa"] = _kappa(va, vb, labels)
    if row["cohen_kappa"] is None:
        only = sorted(set(va) | set(vb), key=_label_sort_key)
        notes.append(f"Cohen's κ is undefined for {name_a} vs {name_b}: both gave only "
                     f"{_fmt_labels(only)} on the {n} rows compared (no variation to correct for "
                     f"chance); percent agreement is still reported")
    return row, _confusion(va, vb, name_a, name_b, labels)


def _codes(values: list[Any], labels: list[Any]) -> list[int]:
    index = {label: i for i, label in enumerate(labels)}
    return [index[v] for v in values]


def _kappa(va: list[Any], vb: list[Any], labels: list[Any]) -> float | None:
    """sklearn's Cohen's κ on integer codes (so mixed label types never trip it); NaN → None."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(_codes(va, labels), _codes(vb, labels))
    return None if value is None or math.isnan(value) else float(value)


def _confusion(va: list[Any], vb: list[Any], name_a: str, name_b: str,
               labels: list[Any]) -> pd.DataFrame:
    """Counts of (label by A, label by B), square over the labels either model used here."""
    table = pd.crosstab(pd.Series(va, name=name_a, dtype=object),
                        pd.Series(vb, name=name_b, dtype=object))
    used = [label for label in labels if label in set(va) | set(vb)]
    table = table.reindex(index=used, columns=used, fill_value=0).astype("int64")
    table.index.name, table.columns.name = name_a, name_b
    return table


def _alpha(block: pd.DataFrame, labels: list[Any], notes: list[str]) -> float | None:
    """Krippendorff's α (nominal): coders are models, units are rows, missing answers are NaN."""
    import krippendorff

    if len(labels) < 2:
        shown = _fmt_labels(labels) if labels else "no labels"
        notes.append(f"Krippendorff's α is undefined: fewer than 2 distinct values ({shown})")
        return None
    index = {label: i for i, label in enumerate(labels)}
    data = np.array([[np.nan if v is None else index[v] for v in block[m]] for m in block.columns],
                    dtype=float)
    if int((np.isfinite(data).sum(axis=0) >= 2).sum()) == 0:
        notes.append("Krippendorff's α is undefined: no row was answered by 2 or more models")
        return None
    try:
        value = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    except ValueError as exc:  # the package's own checks, should ours miss a case
        notes.append(f"Krippendorff's α is undefined: {exc}")
        return None
    return None if math.isnan(value) else float(value)


def _gold_scores(block: pd.DataFrame, gold: pd.Series, models: list[str], normalize: bool,
                 notes: list[str]) -> pd.DataFrame:
    """Accuracy and macro-F1 of each model against the reference labels, where both exist."""
    from sklearn.metrics import accuracy_score, f1_score

    truth = _label_block(gold.to_frame(), [gold.name], normalize)[gold.name]
    rows = []
    for model in models:
        both = truth.notna() & block[model].notna()
        yt, yp = truth[both].tolist(), block[model][both].tolist()
        n = len(yt)
        if n == 0:
            notes.append(f"{model}: no row has both an answer and a {gold.name!r} label")
            rows.append({"model": model, "n": 0, "accuracy": None, "macro_f1": None})
            continue
        labels = sorted(set(yt) | set(yp), key=_label_sort_key)
        ct, cp = _codes(yt, labels), _codes(yp, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append({"model": model, "n": n, "accuracy": float(accuracy_score(ct, cp)),
                         "macro_f1": float(f1_score(ct, cp, average="macro", zero_division=0))})
    frame = pd.DataFrame(rows, columns=["model", "n", "accuracy", "macro_f1"])
    frame["n"] = frame["n"].astype("int64")
    return frame


# --------------------------------------------------------------------------------------------
# Output


def _plain(value: Any) -> Any:
    """A JSON-native value: numpy scalars unwrapped, NaN → None, other objects as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if _is_missing(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    if frame is None:
        return None
    return [{k: _plain(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def _key_to_dict(ka: KeyAgreement) -> dict[str, Any]:
    return {
        "models": list(ka.models), "columns": list(ka.columns), "n_rows": ka.n_rows,
        "n_complete": ka.n_complete, "n_alpha": ka.n_alpha, "labels": [_plain(v) for v in ka.labels],
        "alpha": _plain(ka.alpha), "pairs": _records(ka.pairs),
        "confusion": [
            {"model_a": a, "model_b": b, "labels": [_plain(v) for v in table.index],
             "counts": [[int(c) for c in row] for row in table.to_numpy().tolist()]}
            for (a, b), table in ka.confusion.items()],
        "gold_column": ka.gold_column, "gold": _records(ka.gold), "notes": list(ka.notes),
    }


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "—" if _is_missing(value) else f"{value:{spec}}{suffix}"


def _fmt_labels(labels: Sequence[Any]) -> str:
    return ", ".join(repr(v) for v in labels[:5]) + (" ..." if len(labels) > 5 else "")


def _short_list(items: Any, limit: int = 12) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" ... ({len(items)} in all)" if len(items) > limit else "") if items else "none"


def _render_key(ka: KeyAgreement, confusion: bool) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    title = (f"Agreement on {ka.key!r}: {len(ka.models)} models, {ka.n_rows} rows "
             f"({ka.n_complete} answered by all)")
    parts.append(Text(title, style="bold"))
    table = Table()
    for name, justify in (("Model A", "left"), ("Model B", "left"), ("n", "right"),
                          ("Agreement", "right"), ("Cohen's κ", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rec in ka.pairs.to_dict("records"):
        table.add_row(rec["model_a"], rec["model_b"], str(rec["n"]),
                      _fmt(rec["percent_agreement"], ".1f", "%"), _fmt(rec["cohen_kappa"], ".3f"))
    parts.append(table)
    parts.append(Text(f"Krippendorff's α (nominal, across {len(ka.models)} models): "
                      f"{_fmt(ka.alpha, '.3f')}"))
    if ka.gold is not None:
        parts.append(Text(f"Against gold column {ka.gold_column!r}", style="bold"))
        gold = Table()
        for name, justify in (("Model", "left"), ("n", "right"), ("Accuracy", "right"),
                              ("Macro-F1", "right")):
            gold.add_column(name, justify=justify)  # type: ignore[arg-type]
        for rec in ka.gold.to_dict("records"):
            gold.add_row(rec["model"], str(rec["n"]), _fmt(rec["accuracy"], ".3f"),
                         _fmt(rec["macro_f1"], ".3f"))
        parts.append(gold)
    if confusion:
        for (a, b), matrix in ka.confusion.items():
            parts.append(Text(f"Confusion: {a} (rows) × {b} (columns)", style="bold"))
            parts.append(_render_confusion(a, b, matrix))
    parts.extend(Text(f"note: {note}", style="dim") for note in ka.notes)
    parts.append(Text(""))
    return parts


def _render_confusion(a: str, b: str, table: pd.DataFrame) -> Any:
    from rich.table import Table

    out = Table()
    out.add_column(f"{a} \\ {b}")
    for label in table.columns:
        out.add_column(str(label), justify="right")
    for label, row in zip(table.index, table.to_numpy().tolist()):
        out.add_row(str(label), *(str(c) for c in row))
    if table.empty:
        out.add_row("(no rows in common)")
    return out
