"""What a table job's manifest says: the job asked, the input fingerprinted, the models' agreement."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import UsageError
from ..manifest import ManifestRecorder, data_facts
from .runner import TableRunner


def table_job(runner: TableRunner, template: str, **extra: Any) -> dict[str, Any]:
    """The manifest's "job" section for a table run: what each row was asked, of which models."""
    return {"models": list(runner.models), "fanout": runner.fanout, "prompt_template": template,
            "system": runner.system, "options": runner.options, **extra}


def frame_facts(frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame input fingerprinted by content (column names and every cell), for the manifest."""
    names = "\x1f".join(map(str, frame.columns)).encode("utf-8")
    try:
        cells = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    except TypeError:  # unhashable cells (lists, dicts): hash their JSON text instead
        cells = frame.to_json(orient="values", default_handler=str).encode("utf-8")
    return data_facts("dataframe", [names, cells], len(frame))


def save_agreement(manifest: ManifestRecorder, frame: pd.DataFrame, runner: TableRunner) -> Any:
    """After a fan-out run with JSON keys: how much the models agree, kept in the manifest (and so in
    the store, for `corral report`). Returns the AgreementReport, or None when there is nothing to
    compare. Only the keys the job asked for are scored, each at the level its values show, so the
    same output scores the same whether it was written as CSV (text) or Parquet (typed)."""
    keys = getattr(runner.plan, "keys", None)
    if not (runner.fanout and keys and len(runner.models) > 1 and len(frame)):
        return None
    from .agreement import agreement

    try:
        report = agreement(frame, key=list(keys), models=list(runner.models))
    except UsageError as exc:
        manifest.update(agreement={"error": str(exc)})
        return None
    manifest.update(agreement=report.to_dict())
    return report
