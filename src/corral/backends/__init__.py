"""Wire formats: one module per protocol, one small interface (`Backend`)."""

from __future__ import annotations

import aiohttp

from ..config import ServerSpec
from ..transport import HttpTransport
from .base import Backend, BackendError, Reply, ServerInfo, Streamed
from .ollama import OllamaBackend, ollama_model_name
from .openai import OpenAIBackend

BACKENDS: dict[str, type[Backend]] = {"ollama": OllamaBackend, "openai": OpenAIBackend}


def make_backend(spec: ServerSpec, session: aiohttp.ClientSession,
                 transport: HttpTransport | None = None) -> Backend:
    return BACKENDS[spec.api](spec, session, transport)


__all__ = [
    "Backend", "BackendError", "Reply", "ServerInfo", "Streamed", "OllamaBackend", "OpenAIBackend",
    "make_backend", "ollama_model_name", "BACKENDS",
]
