"""The Request record: what one item of a job asks for, independent of any wire format.

Options use Ollama's names (``temperature``, ``seed``, ``num_ctx``, ``num_predict``...), the names
our users already know; each backend translates them (``num_predict`` becomes ``max_tokens`` on
OpenAI-compatible servers). Every request has a stable key, a hash of what is asked, so that a re-run
finds finished work in the store and identical requests inside a job are sent once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

# OpenAI spellings accepted as aliases, so a user can write either.
OPTION_ALIASES = {"max_tokens": "num_predict", "max_completion_tokens": "num_predict"}

ENDPOINTS = ("chat", "generate", "embed")
GROUP_SEP = "|"


def model_group(models: tuple[str, ...] | list[str]) -> str:
    """The queue name of "any of these models" (split mode), e.g. ``llama3.2|mistral``."""
    return GROUP_SEP.join(dict.fromkeys(models))


@dataclass(slots=True)
class Request:
    """One item of work. ``index`` is its position in the input and fixes the output order."""

    index: int
    id: str
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    endpoint: str = "chat"
    keep_alive: str | int | None = None
    inputs: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    # Split mode: any one of these models may answer; the slot that takes the row picks which.
    model_choices: tuple[str, ...] | None = None

    @property
    def prompt(self) -> str:
        """The text a person would call "the prompt": the last user message (or the input)."""
        if self.inputs is not None:
            return self.inputs[0] if len(self.inputs) == 1 else "\n".join(self.inputs)
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else orjson.dumps(content).decode()
        return ""

    @property
    def system(self) -> str | None:
        for message in self.messages:
            if message.get("role") == "system":
                content = message.get("content")
                return content if isinstance(content, str) else None
        return None


def canonical_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Rename OpenAI spellings to Ollama's and drop unset values, so equal asks hash equally."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        out[OPTION_ALIASES.get(name, name)] = value
    return out


def build_messages(prompt: str | None = None, system: str | None = None,
                   messages: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A chat message list from a bare prompt or given messages, with the system message first."""
    result = [dict(m) for m in messages] if messages else []
    if prompt is not None:
        result.append({"role": "user", "content": prompt})
    if system and not any(m.get("role") == "system" for m in result):
        result.insert(0, {"role": "system", "content": system})
    return result


def request_key(request: Request, backend_kind: str) -> str:
    """A stable hash of what is asked: backend kind, endpoint, model, messages, options, format.

    The id and position are left out on purpose: two rows asking the same thing share one answer.
    ``keep_alive`` is left out because it changes how the server keeps the model, not the answer.
    """
    payload = {
        "backend": backend_kind,
        "endpoint": request.endpoint,
        "model": request.model,
        "messages": request.messages,
        "inputs": request.inputs,
        "options": request.options,
        "format": request.format,
        "extra": request.extra,
    }
    blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()
