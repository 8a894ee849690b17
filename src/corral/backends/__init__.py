"""Wire formats: one module per protocol, one small interface (`Backend`)."""

from __future__ import annotations

from ..config import ServerSpec
from ..http import HttpClient
from .base import Backend, BackendError, Reply, ServerInfo, Streamed
from .ollama import OllamaBackend, ollama_model_name
from .openai import OpenAIBackend

BACKENDS: dict[str, type[Backend]] = {"ollama": OllamaBackend, "openai": OpenAIBackend}


def make_backend(spec: ServerSpec, http: HttpClient) -> Backend:
    """The backend for ``spec``'s wire format, sending through ``http``."""
    return BACKENDS[spec.api](spec, http)


__all__ = [
    "Backend", "BackendError", "Reply", "ServerInfo", "Streamed", "OllamaBackend", "OpenAIBackend",
    "make_backend", "ollama_model_name", "BACKENDS",
]
