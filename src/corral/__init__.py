"""corral: run large batches of LLM work across many Ollama and OpenAI-compatible servers.

The public Python API; the `corral` command is a thin front over the same engine.

Every public name is loaded on first use (PEP 562 ``__getattr__``), so ``import corral`` and the
`corral` command start without aiohttp, numpy or pandas: `corral --help` should not pay for an
engine it does not run. The ``TYPE_CHECKING`` block shows type checkers and IDEs the same names.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .api import batch_generate, batch_generate_async
    from .bench import batch_benchmark, batch_benchmark_async
    from .config import Config, ServerSpec, load_config
    from .embeddings import EmbedError, embed, embed_async, embed_file, embed_file_async
    from .engine import Engine, EngineSettings, RetryPolicy
    from .errors import ConfigError, CorralError, InputError, NoServerError, UsageError
    from .requests import Request
    from .results import Outcome
    from .store import Store
    from .tables import (
        TableFileReport,
        analyze_file,
        analyze_file_async,
        fill_missing_fields,
        fill_missing_fields_async,
        fill_missing_fields_from_csv,
        run_analysis,
        run_analysis_async,
    )
    from .tables.agreement import agreement

# public name -> the module (relative to this package) that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(["batch_generate", "batch_generate_async"], ".api"),
    **dict.fromkeys(["Config", "ServerSpec", "load_config"], ".config"),
    **dict.fromkeys(["Engine", "EngineSettings", "RetryPolicy"], ".engine"),
    **dict.fromkeys(["ConfigError", "CorralError", "InputError", "NoServerError", "UsageError"], ".errors"),
    "Request": ".requests",
    "Outcome": ".results",
    "Store": ".store",
    **dict.fromkeys(["run_analysis", "run_analysis_async", "fill_missing_fields",
                     "fill_missing_fields_async", "fill_missing_fields_from_csv"], ".tables"),
    # the function, not the corral.tables.agreement module of that name
    "agreement": ".tables.agreement",
    **dict.fromkeys(["analyze_file", "analyze_file_async", "TableFileReport"], ".tables"),
    **dict.fromkeys(["embed", "embed_async", "embed_file", "embed_file_async", "EmbedError"], ".embeddings"),
    **dict.fromkeys(["batch_benchmark", "batch_benchmark_async"], ".bench"),
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` the first time it is asked for, then keep it here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "batch_generate", "batch_generate_async", "Config", "ServerSpec", "load_config", "Engine",
    "EngineSettings", "RetryPolicy", "ConfigError", "CorralError", "InputError", "NoServerError",
    "UsageError", "Request", "Outcome", "Store", "__version__",
    "agreement", "fill_missing_fields", "fill_missing_fields_async", "fill_missing_fields_from_csv",
    "run_analysis", "run_analysis_async",
    "EmbedError", "embed", "embed_async", "embed_file", "embed_file_async",
    "batch_benchmark", "batch_benchmark_async",
    "analyze_file", "analyze_file_async", "TableFileReport",
]
