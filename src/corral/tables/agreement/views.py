"""What a person reads about one key, as text cells: the terminal (`corral agree`, `corral analyze`),
Jupyter (`_repr_html_`) and `corral report` all draw these same cells, so the three show the same
figures to the same digits. Input is one key of `AgreementReport.to_dict()` (what the manifest
keeps), so the report can draw agreement from a store without recomputing it."""

from __future__ import annotations

import html
from typing import Any

WEIGHT_NAMES = {"none": "", "linear": " (linear)", "quadratic": " (quadratic)"}


def fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def interval(low: Any, high: Any) -> str:
    return "—" if low is None or high is None else f"{low:.3f} – {high:.3f}"


def level_text(kd: dict[str, Any]) -> str:
    level = kd.get("level") or "nominal"
    return f"{level}, inferred" if kd.get("level_inferred") else f"{level}, as asked"


def title(key: str, kd: dict[str, Any]) -> str:
    return (f"Key {key!r} ({level_text(kd)}): {len(kd.get('models') or [])} models, "
            f"{kd.get('n_rows')} rows ({kd.get('n_complete')} answered by all)")


def ci_name(kd: dict[str, Any]) -> str:
    ci = kd.get("ci")
    return f"{ci:.0%} CI" if ci else "CI"


def pair_table(kd: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["Model A", "Model B", "n", "Agreement", f"Cohen's κ{WEIGHT_NAMES.get(kd.get('weights') or 'none', '')}"]
    with_ci = bool(kd.get("ci"))
    if with_ci:
        head.append(ci_name(kd))
    rows = []
    for p in kd.get("pairs") or []:
        row = [str(p.get("model_a")), str(p.get("model_b")), str(p.get("n")),
               fmt(p.get("percent_agreement"), ".1f", "%"), fmt(p.get("cohen_kappa"))]
        if with_ci:
            row.append(interval(p.get("kappa_low"), p.get("kappa_high")))
        rows.append(row)
    return head, rows


def summary_lines(kd: dict[str, Any]) -> list[str]:
    """α (with its interval), Fleiss' κ, and how the intervals were drawn: short enough for 80
    columns, so a terminal or a pipe never breaks a figure across lines."""
    models = len(kd.get("models") or [])
    level = kd.get("level") or "nominal"
    line = f"Krippendorff's α ({level}, {kd.get('n_alpha')} rows): {fmt(kd.get('alpha'))}"
    if kd.get("ci") and kd.get("alpha") is not None:
        line += f", {ci_name(kd)} {interval(kd.get('alpha_low'), kd.get('alpha_high'))}"
    lines = [line]
    if models > 2 and level in ("nominal", "ordinal"):
        lines.append(f"Fleiss' κ ({kd.get('n_complete')} rows answered by all): {fmt(kd.get('fleiss_kappa'))}")
    if kd.get("ci") and kd.get("n_boot"):
        lines.append(f"Intervals: percentile bootstrap, {kd['n_boot']} resamples of rows, seed {kd.get('seed')}")
    return lines


def gold_table(kd: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    gold = kd.get("gold")
    if not gold:
        return None
    head = ["Model", "n", "Accuracy", "Macro-F1"]
    has_mae = any("mae" in g for g in gold)
    if has_mae:
        head.append("MAE")
    rows = []
    for g in gold:
        row = [str(g.get("model")), str(g.get("n")), fmt(g.get("accuracy")), fmt(g.get("macro_f1"))]
        if has_mae:
            row.append(fmt(g.get("mae")))
        rows.append(row)
    return head, rows


NUMERIC_HEADS = {"n", "Agreement", "Accuracy", "Macro-F1", "MAE"}


def is_numeric(head: str) -> bool:
    return head in NUMERIC_HEADS or head.startswith(("Cohen", "CI")) or head.endswith("CI")


# ---------------------------------------------------------------------------------------- HTML


def html_table(head: list[str], rows: list[list[str]]) -> str:
    numeric = [is_numeric(h) for h in head]
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class=num style="text-align:right">{html.escape(c)}</td>' if num else f"<td>{html.escape(c)}</td>"
            for c, num in zip(row, numeric)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def key_html(key: str, kd: dict[str, Any], heading: int = 3) -> str:
    """One key's title, tables, α / Fleiss lines and notes (no confusion heatmaps) as HTML."""
    parts = [f"<h{heading}>{html.escape(title(key, kd))}</h{heading}>", html_table(*pair_table(kd))]
    parts.extend(f"<p>{html.escape(line)}</p>" for line in summary_lines(kd))
    gold = gold_table(kd)
    if gold is not None:
        parts.append(f"<p>Against gold column {html.escape(repr(kd.get('gold_column')))}:</p>")
        parts.append(html_table(*gold))
    parts.extend(f"<p class=meta>note: {html.escape(n)}</p>" for n in kd.get("notes") or [])
    return "".join(parts)
