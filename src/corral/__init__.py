"""corral: run large batches of LLM work across many Ollama and OpenAI-compatible servers.

The public Python API; the `corral` command is a thin front over the same engine.
"""

from __future__ import annotations

from .api import batch_generate, batch_generate_async
from .config import Config, ServerSpec, load_config
from .engine import Engine, EngineSettings, RetryPolicy
from .errors import ConfigError, CorralError, InputError, NoServerError, UsageError
from .requests import Request
from .results import Outcome
from .store import Store

__version__ = "0.1.0"

__all__ = [
    "batch_generate", "batch_generate_async", "Config", "ServerSpec", "load_config", "Engine",
    "EngineSettings", "RetryPolicy", "ConfigError", "CorralError", "InputError", "NoServerError",
    "UsageError", "Request", "Outcome", "Store", "__version__",
]
