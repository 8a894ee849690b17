"""corral: run large batches of LLM work across many Ollama and OpenAI-compatible servers.

The public Python API; the `corral` command is a thin front over the same engine.
"""

from __future__ import annotations

from ._version import __version__
from .api import batch_generate, batch_generate_async
from .config import Config, ServerSpec, load_config
from .engine import Engine, EngineSettings, RetryPolicy
from .errors import ConfigError, CorralError, InputError, NoServerError, UsageError
from .requests import Request
from .results import Outcome
from .store import Store


_TABLES = {"run_analysis", "run_analysis_async", "analyze_file", "analyze_file_async",
           "fill_missing_fields", "fill_missing_fields_async", "fill_missing_fields_from_csv", "agreement"}


_EMBEDDINGS = {"embed", "embed_async", "embed_file", "embed_file_async", "EmbedError"}

_BENCH = {"batch_benchmark", "batch_benchmark_async"}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """The table and embedding functions load pandas/numpy only when first used."""
    if name in _EMBEDDINGS:
        from . import embeddings

        return getattr(embeddings, name)
    if name in _BENCH:
        from . import bench

        return getattr(bench, name)
    if name == "agreement":  # the function, not the corral.tables.agreement module of that name
        from .tables.agreement import agreement

        return agreement
    if name in _TABLES:
        from . import tables

        return getattr(tables, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")

__all__ = [
    "batch_generate", "batch_generate_async", "Config", "ServerSpec", "load_config", "Engine",
    "EngineSettings", "RetryPolicy", "ConfigError", "CorralError", "InputError", "NoServerError",
    "UsageError", "Request", "Outcome", "Store", "__version__", *sorted(_TABLES), *sorted(_EMBEDDINGS), *sorted(_BENCH),
]
