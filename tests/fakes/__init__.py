"""Fake Ollama / OpenAI-compatible servers for corral's tests (see ``tests.fakes.server``).

Exports are resolved lazily (PEP 562) so that ``python -m tests.fakes.server`` does not import the
server module twice (once as a package member, once as ``__main__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import (
        OLLAMA_BUSY_MESSAGE,
        Blackhole,
        FakeServer,
        Latency,
        Responder,
        fake_embedding,
        prompts_of,
        run_fake_servers_cli,
    )

__all__ = [
    "Blackhole",
    "FakeServer",
    "Latency",
    "OLLAMA_BUSY_MESSAGE",
    "Responder",
    "fake_embedding",
    "prompts_of",
    "run_fake_servers_cli",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
