"""Fake Ollama / OpenAI-compatible servers for corral's tests and benchmarks.

``FakeServer`` (``fake_server.py``) is assembled from ``core.py`` (settings, counters, the loop
thread), ``exchange.py`` (request plumbing and error dialects), ``faults.py`` (misbehaviour on
demand, and ``Blackhole``), ``ollama.py`` and ``openai.py`` (each protocol's routes); ``wire.py``
holds the deterministic helpers behind every answer. ``fixtures.py`` hands tests started servers;
``python -m tests.fakes`` (``cli.py``) runs them in a process of their own.
"""

from __future__ import annotations

from .cli import run_fake_servers_cli
from .core import Gauge
from .fake_server import FakeServer
from .faults import Blackhole
from .wire import OLLAMA_BUSY_MESSAGE, ApiKind, Latency, Responder, fake_embedding, prompts_of

__all__ = [
    "ApiKind",
    "Blackhole",
    "FakeServer",
    "Gauge",
    "Latency",
    "OLLAMA_BUSY_MESSAGE",
    "Responder",
    "fake_embedding",
    "prompts_of",
    "run_fake_servers_cli",
]
