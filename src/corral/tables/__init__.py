"""DataFrames and table files: split / fan-out analysis, fill-missing, structured answers, agreement.

Needs the ``corral[tables]`` extra (pandas, pyarrow); the core engine does not import this package.
"""

from .analysis import run_analysis, run_analysis_async
from .fill import fill_missing_fields, fill_missing_fields_async, fill_missing_fields_from_csv

__all__ = ["run_analysis", "run_analysis_async", "fill_missing_fields", "fill_missing_fields_async",
           "fill_missing_fields_from_csv", "agreement"]


def agreement(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Agreement between fanned-out models (see corral.tables.agreement.agreement)."""
    from .agreement import agreement as _agreement

    return _agreement(*args, **kwargs)
