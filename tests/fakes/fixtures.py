"""Pytest fixtures that hand tests started fake servers and always stop them afterwards.

Load with ``pytest_plugins = ["tests.fakes.fixtures"]`` (in a test module or the root conftest) or
``from tests.fakes.fixtures import *``. Every server is stopped at teardown even when the test fails,
so a hung or killed fake never leaks a thread or a port into the next test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fake_server import FakeServer

__all__ = ["fake_ollama", "fake_ollama_factory", "fake_openai"]

#: ``fake_ollama_factory(**kwargs)`` -> a started FakeServer (api="ollama" unless overridden).
FakeServerFactory = Callable[..., FakeServer]


@pytest.fixture
def fake_ollama() -> Iterator[FakeServer]:
    """One started fake Ollama server (model "llama3.2", no latency)."""
    server = FakeServer(api="ollama").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_openai() -> Iterator[FakeServer]:
    """One started fake OpenAI-compatible (vLLM-like) server (model "llama3.2")."""
    server = FakeServer(api="openai").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_ollama_factory() -> Iterator[FakeServerFactory]:
    """A callable making any number of started servers: ``make(slots=2, latency=0.1)``.

    Keyword arguments go to ``FakeServer``; ``api`` defaults to "ollama" but ``api="openai"`` works.
    """
    servers: list[FakeServer] = []

    def make(**kwargs: Any) -> FakeServer:
        kwargs.setdefault("api", "ollama")
        server = FakeServer(**kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for server in reversed(servers):
            try:
                server.stop()
            except BaseException as exc:  # stop the others anyway, then report
                errors.append(exc)
        if errors:
            raise errors[0]
