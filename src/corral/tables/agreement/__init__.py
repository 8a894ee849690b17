"""Inter-model agreement for fan-out runs, at every level of measurement.

A fan-out run (``run_analysis(..., model_names=[...], fanout=True)``) leaves one column per model
and JSON key, named ``{key}_{model}`` (``label_llama3.2``, ``label_qwen3:8b``), plus
``response_{model}`` and ``error_{model}``. Researchers then ask "do the models agree, and how
well does each match my hand coding?" - this package answers that from the frame alone:

* per pair of models: rows both answered, percent agreement, Cohen's κ (weighted by the level:
  none for labels, linear for ordinal scales, quadratic for interval and ratio, or as asked);
* across all models: Krippendorff's α at the key's level (`scale` says how it is chosen), and
  Fleiss' κ when there are three or more models and the answers are labels or ranks;
* seeded percentile bootstrap intervals for κ and α;
* against a gold column: accuracy, macro-F1 (labels, ranks) and mean absolute error (numbers).

Missing answers (the model errored on that row) are never guessed: pairwise statistics use the
rows both models answered, α uses every row answered by two or more models (its definition
allows gaps), Fleiss' κ the rows every model answered.

`columns` finds the columns, `scale` reads the answers onto a scale, `kappa` and `alpha` compute,
`resample` bootstraps, `analyse` scores one key, `record` holds the results and `views` formats
them for the terminal, Jupyter and `corral report` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ...errors import UsageError
from .analyse import Options, analyse_key
from .columns import key_models, per_key_map, resolve_keys
from .kappa import WEIGHTS
from .record import FRAME_COLUMNS, AgreementReport, KeyAgreement
from .scale import LEVELS

__all__ = ["agreement", "AgreementReport", "KeyAgreement", "LEVELS", "WEIGHTS", "FRAME_COLUMNS",
           "DEFAULT_N_BOOT"]

#: Bootstrap resamples for the intervals when ``n_boot`` is not given.
DEFAULT_N_BOOT = 1000


def agreement(df: Any, key: str | Sequence[str] | None = None, models: Sequence[str] | None = None,
              gold: str | Mapping[str, str] | None = None, *, level: str | Mapping[str, str] | None = None,
              weights: str | None = None, ci: float | None = 0.95, n_boot: int = DEFAULT_N_BOOT,
              seed: int | None = 0, normalize: bool = True) -> AgreementReport:
    """How much the models of a fan-out run agree with each other (and with a gold column).

    ``df``: a pandas or polars DataFrame. ``key``: one key or several; ``None`` analyses every key
    some model answered. ``models`` restricts and orders the models (default: all found, in column
    order). ``gold``: a column of reference labels used for every key, or ``{key: column}``.

    ``level``: ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"`` for every key, or
    ``{key: level}``; ``None`` reads each key's level off its values (labels nominal, whole-number
    ratings ordinal, other numbers interval). ``weights``: ``"linear"`` or ``"quadratic"`` weighted
    Cohen's κ for ordered keys, ``"none"`` unweighted; ``None`` picks by level (nominal keys are
    always unweighted). ``ci``: the confidence level of the bootstrap intervals (``None`` for
    none), from ``n_boot`` resamples of the rows drawn with ``seed`` (``None``: a fresh seed each
    call). ``normalize``: compare labels after stripping and case-folding (see `scale`).

    Raises `UsageError` when a key has fewer than two model columns, a named column is missing, or
    a level does not fit the answers (text cannot be interval).
    """
    df = _pandas(df)
    if weights is not None and weights not in WEIGHTS:
        raise UsageError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)} (or None: by level)")
    if ci is not None and not 0 < ci < 1:
        raise UsageError(f"ci must be between 0 and 1 (e.g. 0.95), not {ci}")
    if n_boot < 0:
        raise UsageError(f"n_boot must be 0 or more, not {n_boot}")
    model_list = list(models) if models is not None else None
    if model_list is not None and len(set(model_list)) != len(model_list):
        raise UsageError(f"models lists a model twice: {', '.join(model_list)}")
    if model_list is not None and len(model_list) < 2:
        raise UsageError(f"agreement needs at least 2 models; got {', '.join(model_list) or 'none'}")
    gold_map = per_key_map(df, gold, "gold", check_column=True)
    level_map = per_key_map(df, level, "level", check_column=False)
    exclude = set(gold_map.values())
    keys = resolve_keys(df, key, model_list, exclude)
    for what, mapping in (("gold columns", gold_map), ("levels", level_map)):
        stray = [k for k in mapping if k != "*" and k not in keys]
        if stray:
            raise UsageError(f"{what} given for key(s) not analysed: {', '.join(stray)} "
                             f"(keys analysed: {', '.join(keys)})")
    opts = Options(normalize=normalize, weights=weights, ci=ci, n_boot=n_boot, seed=seed)
    results: dict[str, KeyAgreement] = {}
    for k in keys:
        found = key_models(df, k, model_list, exclude)
        results[k] = analyse_key(df, k, found, gold_map.get(k, gold_map.get("*")),
                                 level_map.get(k, level_map.get("*")), opts)
    return AgreementReport(keys=results, normalize=normalize, ci=ci, n_boot=n_boot if ci else 0, seed=seed)


def _pandas(df: Any) -> pd.DataFrame:
    """The frame as pandas: polars (eager or lazy) is converted, anything else is refused."""
    if isinstance(df, pd.DataFrame):
        return df
    module = type(df).__module__.split(".")[0]
    if module == "polars":
        if hasattr(df, "collect") and not hasattr(df, "to_pandas"):
            df = df.collect()
        return df.to_pandas()
    raise UsageError(f"agreement() needs a pandas or polars DataFrame, not {type(df).__name__}")
