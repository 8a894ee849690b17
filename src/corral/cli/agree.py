"""`corral agree`: how much the models of a fan-out run agree (κ, % agreement, α, gold scores)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import UsageError
from . import app

COMPRESSION = {".gz", ".bz2", ".xz", ".zip", ".zst"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".xlsx": "excel"}


@app.command("agree")
def agree_command(
    file: str = typer.Argument(..., help="Fan-out results: .csv .tsv .parquet/.pq .jsonl/.ndjson .json .xlsx"),
    key: Optional[list[str]] = typer.Option(
        None, "--key", "-k", metavar="KEY", help="JSON key to compare (columns KEY_<model>); repeat for several. "
                                  "Default: every categorical key found."),
    models: Optional[str] = typer.Option(None, "--models", "-m", help="Comma-separated models to "
                                         "compare, in this order (default: all found)."),
    gold: Optional[list[str]] = typer.Option(
        None, "--gold", metavar="[KEY=]COLUMN", help="Column of reference labels: accuracy and macro-F1 per model. "
                             "KEY=COLUMN gives one key its own gold column."),
    level: Optional[list[str]] = typer.Option(
        None, "--level", metavar="[KEY=]LEVEL", help="Level of measurement for Krippendorff's α: nominal, ordinal, "
                             "interval or ratio; KEY=LEVEL for one key. Default: read off the values."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="none|linear|quadratic",
                                          help="Cohen's κ weights for ordered keys. Default: by level "
                                          "(ordinal linear, interval and ratio quadratic)."),
    ci: float = typer.Option(0.95, "--ci", help="Confidence level of the bootstrap intervals (0 for none)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of the rows."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap (the same seed gives the same intervals)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    confusion: bool = typer.Option(False, "--confusion", help="Print a confusion table per model pair."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Compare labels exactly "
                                      "(default: strip whitespace, ignore case)."),
    encoding: Optional[str] = typer.Option(
        None, "--encoding", help="Encoding of a CSV or TSV file that is not UTF-8: cp1252, latin-1, utf-16..."),
) -> None:
    """Pairwise Cohen's κ and percent agreement, Krippendorff's α, Fleiss' κ, and gold-label scores.

    Each key is scored at its level of measurement (labels nominal, whole-number ratings ordinal,
    other numbers interval; --level to say otherwise), with seeded bootstrap intervals.

    Empty cells are missing answers (a model that errored on that row); text such as "NA" or
    "None" stays a label.

    \b
    Example:
      corral agree labelled.csv --key label
      corral agree labelled.parquet -m llama3.2,gemma3 --gold human_label --confusion --json agree.json
      corral agree scored.csv --level stars=ordinal --weights quadratic
    """
    from ..tables.agreement import agreement

    frame = read_table(file, encoding)
    keys = _split(key) or None
    model_list = _split([models]) if models else None
    report = agreement(frame, key=keys, models=model_list, gold=_per_key_arg(gold, "--gold", "COLUMN"),
                       level=_per_key_arg(level, "--level", "LEVEL"), weights=weights, ci=ci or None,
                       n_boot=n_boot, seed=seed, normalize=not no_normalize)
    from rich.console import Console

    Console(file=sys.stdout).print(report.render(confusion=confusion))
    if json_out:
        _write_json(json_out, report.to_dict(), file)


def read_table(path_text: str, encoding: str | None = None) -> Any:
    """A results file as a DataFrame, the format chosen by extension; problems become UsageError."""
    import pandas as pd

    from ..sources.delimited import ENCODING_HINT, check_encoding

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path_text}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UsageError(f"{path_text}: unknown file type; use one of {', '.join(FORMATS)}")
    # Only empty cells are missing: a label "NA", "null" or "None" is an answer, not a gap.
    text_opts: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}
    codec = check_encoding(encoding)
    if encoding is not None and fmt not in ("csv", "tsv"):
        raise UsageError(f"--encoding is for CSV and TSV files, not {fmt}")
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", encoding=codec, **text_opts)
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if fmt == "json":
            return pd.read_json(path, dtype=False)
        return pd.read_excel(path, **text_opts)
    except ImportError as exc:
        raise UsageError(f"{path_text}: reading {fmt} needs an extra package ({exc}); "
                         f"pip install 'corral[tables]'") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path_text}: not {'UTF-8' if encoding is None else encoding} ({exc.reason} at byte "
                         f"{exc.start}); {ENCODING_HINT}") from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path_text}: cannot read as {fmt}: {first}") from None


def _split(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list (model names never contain commas)."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _per_key_arg(values: list[str] | None, flag: str, what: str) -> str | dict[str, str] | None:
    """``--gold COL`` (every key) or ``--gold KEY=COL`` (per key); the two forms do not mix."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    mapping: dict[str, str] = {}
    for value in values:
        name, sep, column = value.partition("=")
        if not sep or not name or not column:
            raise UsageError(f"{flag} {value!r}: with several {flag} flags, write KEY={what}")
        mapping[name.strip()] = column.strip()
    return mapping


def _write_json(path: str, data: dict[str, Any], source: str) -> None:
    import json

    from ..sinks.output import write_whole

    try:
        write_whole(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                    inputs=(source,))
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    print(f"corral: wrote the agreement report to {path}", file=sys.stderr)
