"""The results: one `KeyAgreement` per key, gathered in an `AgreementReport` with its views."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import views
from .columns import is_missing

#: `AgreementReport.to_frame()`'s columns, in order (the first eight are the original ones).
FRAME_COLUMNS = ["key", "scope", "model_a", "model_b", "n", "percent_agreement", "cohen_kappa", "alpha",
                 "level", "weights", "alpha_low", "alpha_high", "kappa_low", "kappa_high", "fleiss_kappa"]
_FLOATS = ["percent_agreement", "cohen_kappa", "alpha", "alpha_low", "alpha_high", "kappa_low",
           "kappa_high", "fleiss_kappa"]


@dataclass
class KeyAgreement:
    """Agreement statistics for one JSON key across the models that answered it."""

    key: str
    models: list[str]
    columns: list[str]
    n_rows: int                  # rows in the frame
    n_complete: int              # rows every model answered (the rows Fleiss' κ uses)
    n_alpha: int                 # rows answered by ≥ 2 models: the units α is computed on
    labels: list[Any]            # every value some model gave, in scale order
    # model_a, model_b, n, percent_agreement (0-100), cohen_kappa, kappa_low, kappa_high;
    # undefined values are NaN here and None in to_dict()
    pairs: pd.DataFrame
    alpha: float | None          # Krippendorff's α at `level` across all models
    confusion: dict[tuple[str, str], pd.DataFrame]
    level: str = "nominal"       # nominal, ordinal, interval or ratio
    level_inferred: bool = True  # read off the values (False: the caller named it)
    weights: str = "none"        # Cohen's κ weights: none, linear or quadratic
    alpha_low: float | None = None
    alpha_high: float | None = None
    fleiss_kappa: float | None = None   # with 3 or more models, nominal and ordinal keys
    gold: pd.DataFrame | None = None    # model, n, accuracy, macro_f1 (and mae for numbers)
    gold_column: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class AgreementReport:
    """Agreement for every key analysed; `render()` for a terminal, `_repr_html_` for Jupyter,
    `to_frame()` / `to_dict()` for code."""

    keys: dict[str, KeyAgreement]
    normalize: bool = True
    ci: float | None = 0.95
    n_boot: int = 0
    seed: int | None = 0

    def to_frame(self) -> pd.DataFrame:
        """One tidy long table: a row per (key, model pair), plus one ``scope="all"`` row per key
        with α, its interval and Fleiss' κ (columns: `FRAME_COLUMNS`)."""
        rows: list[dict[str, Any]] = []
        for key, ka in self.keys.items():
            common = {"key": key, "level": ka.level, "weights": ka.weights}
            for rec in ka.pairs.to_dict("records"):
                rows.append({**common, "scope": "pair", **rec})
            rows.append({**common, "scope": "all", "n": ka.n_alpha, "alpha": ka.alpha,
                         "alpha_low": ka.alpha_low, "alpha_high": ka.alpha_high,
                         "fleiss_kappa": ka.fleiss_kappa})
        frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
        for name in _FLOATS:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        frame["n"] = frame["n"].astype("int64")
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (NaN/None become null, numpy numbers become Python ones)."""
        return {"normalize": self.normalize, "ci": self.ci, "n_boot": self.n_boot, "seed": self.seed,
                "keys": {key: self._key_dict(ka) for key, ka in self.keys.items()}}

    def render(self, confusion: bool = False) -> Any:
        """A `rich` renderable: per key, the pairwise table, α, Fleiss' κ, gold scores and
        (optionally) confusion tables."""
        from rich.console import Group

        parts: list[Any] = []
        for key, ka in self.keys.items():
            parts.extend(_render_key(key, self._key_dict(ka), ka, confusion))
        return Group(*parts)

    def __rich__(self) -> Any:
        return self.render()

    def _repr_html_(self) -> str:
        data = self.to_dict()["keys"]
        return "<div>" + "".join(views.key_html(key, kd) for key, kd in data.items()) + "</div>"

    def _key_dict(self, ka: KeyAgreement) -> dict[str, Any]:
        return {
            "models": list(ka.models), "columns": list(ka.columns), "n_rows": ka.n_rows,
            "n_complete": ka.n_complete, "n_alpha": ka.n_alpha, "labels": [_plain(v) for v in ka.labels],
            "level": ka.level, "level_inferred": ka.level_inferred, "weights": ka.weights,
            "ci": self.ci, "n_boot": self.n_boot if self.ci else 0, "seed": self.seed,
            "alpha": _plain(ka.alpha), "alpha_low": _plain(ka.alpha_low), "alpha_high": _plain(ka.alpha_high),
            "fleiss_kappa": _plain(ka.fleiss_kappa), "pairs": _records(ka.pairs),
            "confusion": [
                {"model_a": a, "model_b": b, "labels": [_plain(v) for v in table.index],
                 "counts": [[int(c) for c in row] for row in table.to_numpy().tolist()]}
                for (a, b), table in ka.confusion.items()],
            "gold_column": ka.gold_column, "gold": _records(ka.gold), "notes": list(ka.notes),
        }


def _plain(value: Any) -> Any:
    """A JSON-native value: numpy scalars unwrapped, NaN → None, other objects as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if is_missing(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    if frame is None:
        return None
    return [{k: _plain(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def _render_key(key: str, kd: dict[str, Any], ka: KeyAgreement, confusion: bool) -> list[Any]:
    from rich.text import Text

    parts: list[Any] = [Text(views.title(key, kd), style="bold"), _rich_table(*views.pair_table(kd))]
    parts.extend(Text(line) for line in views.summary_lines(kd))
    gold = views.gold_table(kd)
    if gold is not None:
        parts.append(Text(f"Against gold column {ka.gold_column!r}", style="bold"))
        parts.append(_rich_table(*gold))
    if confusion:
        for (a, b), matrix in ka.confusion.items():
            parts.append(Text(f"Confusion: {a} (rows) × {b} (columns)", style="bold"))
            parts.append(_render_confusion(a, b, matrix))
    parts.extend(Text(f"note: {note}", style="dim") for note in ka.notes)
    parts.append(Text(""))
    return parts


def _rich_table(head: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table()
    for name in head:
        table.add_column(name, justify="right" if views.is_numeric(name) else "left")
    for row in rows:
        table.add_row(*row)
    return table


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
