"""What the fake servers say, independent of any server state: wire constants, the JSON codec,
and the deterministic text, token, model-name, vector and schema helpers behind every answer.

Deterministic so that tests can predict every answer: the same prompt gets the same text, tokens,
digest and embedding on every run and every server.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Union

try:  # orjson is a corral dependency; the fake only uses it for speed under load.
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    def loads(raw: bytes) -> Any:
        return orjson.loads(raw)

except ImportError:  # pragma: no cover - exercised only without orjson

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(raw: bytes) -> Any:
        return json.loads(raw)


ApiKind = Literal["ollama", "openai"]
Body = dict[str, Any]
#: Seconds per request, or a function of the request body (lets a test make some prompts slow).
Latency = Union[float, Callable[[Body], float]]
#: Produces the generated text for a request body.
Responder = Callable[[Body], str]

#: Ollama's ErrMaxQueue text (server/sched.go), two spaces included.
OLLAMA_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

HOST = "127.0.0.1"  # never anything else: tests must not talk to the network
MODIFIED_AT = "2025-03-14T09:26:53.589793Z"
CREATED = 1741944413
CHAT_PATHS = frozenset({"/api/chat", "/v1/chat/completions"})
EMBED_INPUT_PATHS = frozenset({"/api/embed", "/v1/embeddings"})
PROMPT_PATHS = frozenset({"/api/generate", "/api/embeddings", "/v1/completions"})
_TOKEN_RE = re.compile(r"\s*\S+")
INFERENCE_PATHS = CHAT_PATHS | EMBED_INPUT_PATHS | PROMPT_PATHS


class Reply(Exception):
    """An early HTTP answer (errors, mostly) raised from deep inside a handler."""

    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = headers or {}


def now_rfc3339() -> str:
    """Go's time.Time JSON form, as Ollama writes ``created_at``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def text_of(content: Any) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type": "text", "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace-separated words."""
    return len(text.split())


def messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(count_tokens(text_of(m.get("content"))) for m in messages if isinstance(m, dict))


def limit_tokens(text: str, limit: int | None) -> tuple[str, int, bool]:
    """Cut ``text`` to ``limit`` tokens. Returns (text, token count, truncated?)."""
    tokens = _TOKEN_RE.findall(text)
    if limit is not None and 0 < limit < len(tokens):
        return "".join(tokens[:limit]), limit, True
    return text, len(tokens), False


def stream_pieces(text: str) -> list[str]:
    """Split an answer into the per-token pieces a streaming server sends; they join back to it."""
    pieces = _TOKEN_RE.findall(text)
    tail = text[len("".join(pieces)):]
    if tail:
        pieces.append(tail)
    return pieces


def token_ids(text: str) -> list[int]:
    """Stable fake token ids (Ollama's deprecated ``context`` field)."""
    return [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "big") % 128000
            for t in text.split()]


def ollama_full_name(name: str) -> str:
    """Ollama lists an untagged model "x" as "x:latest"."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_key(name: str) -> str:
    """Matching key: case-insensitive, default registry prefix dropped, ":latest" implied."""
    key = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return ollama_full_name(key)


def is_embedding_model(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in ("embed", "minilm", "bge"))


def model_family(name: str) -> str:
    lowered = name.lower()
    for prefix, family in (("qwen3", "qwen3"), ("qwen", "qwen2"), ("gemma3", "gemma3"),
                           ("gemma", "gemma2"), ("phi", "phi3"), ("nomic", "nomic-bert"),
                           ("mxbai", "bert"), ("all-minilm", "bert"), ("bge", "bert")):
        if lowered.startswith(prefix):
            return family
    return "llama"


def parameter_size(name: str) -> str:
    match = re.search(r"[:\-_](\d+(?:\.\d+)?)([bm])\b", name.lower())
    return f"{match.group(1)}{match.group(2).upper()}" if match else "3.2B"


def model_digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@lru_cache(maxsize=65536)
def _embedding_cached(text: str, dim: int) -> tuple[float, ...]:
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}\x00{text}".encode()).digest()
        values.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", digest))
        block += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def fake_embedding(text: str, dim: int) -> list[float]:
    """The unit vector the fake returns for ``text``: identical text, identical vector."""
    return list(_embedding_cached(text, dim))


def dummy_for_schema(schema: Any, echo: str, root: Any, depth: int = 0) -> Any:
    """A value that satisfies the simple parts of a JSON Schema (type, enum, const, properties)."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return dummy_for_schema(target, echo, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            for option in options:  # prefer a non-null branch
                if not (isinstance(option, dict) and option.get("type") == "null"):
                    return dummy_for_schema(option, echo, root, depth + 1)
            return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {key: dummy_for_schema(sub, echo, root, depth + 1) for key, sub in props.items()}
    if kind == "array":
        count = schema.get("minItems", 0)
        count = count if isinstance(count, int) and 0 < count <= 8 else 0
        return [dummy_for_schema(schema.get("items", {}), echo, root, depth + 1)
                for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 0)) if isinstance(schema.get("minimum"), (int, float)) else 0
    if kind == "number":
        return float(schema["minimum"]) if isinstance(schema.get("minimum"), (int, float)) else 0.0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return echo  # "string" and anything unknown


def prompts_of(path: str, body: Body) -> list[str]:
    """The prompt text(s) a recorded request is "about": what ``count_by_prompt`` counts."""
    if path in CHAT_PATHS:
        text = last_user_text(body.get("messages"))
        return [text] if text else []
    key = "input" if path in EMBED_INPUT_PATHS else "prompt" if path in PROMPT_PATHS else None
    if key is None:
        return []
    value = body.get(key)
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
