"""DataFrames and table files: split / fan-out analysis, fill-missing, structured answers, agreement.

Needs the ``corral[tables]`` extra (pandas, pyarrow); the core engine does not import this package.
"""

from .analysis import analyze_file, analyze_file_async, run_analysis, run_analysis_async
from .fill import fill_missing_fields, fill_missing_fields_async, fill_missing_fields_from_csv
from .job import TableFileReport

__all__ = ["run_analysis", "run_analysis_async", "analyze_file", "analyze_file_async",
           "TableFileReport", "fill_missing_fields", "fill_missing_fields_async",
           "fill_missing_fields_from_csv"]

# `corral.agreement` is the function in the submodule corral.tables.agreement (loaded on first use:
# it brings scikit-learn); a same-named function here would be shadowed by the submodule on import.
