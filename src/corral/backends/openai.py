"""OpenAI-compatible servers (vLLM, llama.cpp's llama-server, SGLang, LM Studio).

Paths: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, and llama.cpp's /props for
its slot count. Ollama option names are translated (``num_predict`` -> ``max_tokens``); options that
only mean something to Ollama's runtime (``num_ctx``, ``num_gpu``...) are not sent, because strict
servers reject unknown fields.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Sequence
from typing import Any

from ..requests import Request
from .base import (
    Backend,
    BackendError,
    Reply,
    ServerInfo,
    Streamed,
    count_field,
    fingerprint,
    list_field,
    ms_field,
    object_field,
    sha256_text,
    text_field,
)

# Ollama runtime settings with no per-request meaning on OpenAI-compatible servers.
_OLLAMA_ONLY = frozenset({
    "num_ctx", "num_gpu", "num_thread", "num_batch", "main_gpu", "use_mmap", "use_mlock", "numa",
    "low_vram", "num_keep", "vocab_only", "f16_kv",
})
_RENAMES = {"num_predict": "max_tokens", "repeat_penalty": "repeat_penalty"}


def response_format(fmt: Any) -> dict[str, Any] | None:
    """Ollama's ``format`` ("json" or a JSON Schema) as an OpenAI ``response_format``."""
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        if fmt.get("type") in ("json_object", "json_schema", "text") and "schema" not in fmt:
            return fmt  # already an OpenAI response_format
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt, "strict": True}}
    raise BackendError(f"unsupported format {fmt!r}: use \"json\" or a JSON Schema object")


class OpenAIBackend(Backend):
    kind = "openai"
    _base64_embeddings = True  # until the server refuses encoding_format="base64"

    async def probe(self, timeout: float) -> ServerInfo:
        listing = await self._get("/v1/models", timeout)
        models = {model_id: {"owned_by": text_field(entry.get("owned_by")), "created": entry.get("created")}
                  for model_id, entry in listed_models(listing).items()}
        info = ServerInfo(models=models)
        try:  # llama.cpp tells how many parallel slots it has; other servers answer 404
            props = await self._get("/props", min(timeout, 5.0))
        except BackendError:
            return info
        slots = count_field(props.get("total_slots"))
        info.slots = slots if slots else None
        info.version = text_field(props.get("build_info")) or None
        for alias in (props.get("model_alias"), props.get("model_path")):
            if isinstance(alias, str) and alias and alias not in info.models:
                info.models[alias] = {}
        return info

    async def describe(self, models: Sequence[str], timeout: float) -> dict[str, Any]:
        """What /v1/models (and llama.cpp's /props, or vLLM's /version) say about each model.

        These servers publish no digest, so the manifest gets a fingerprint: a hash of the facts that
        identify the weights (llama.cpp: file name, size, parameter count, vocabulary, type, chat
        template; vLLM: the model's root path and context length). It changes when the model file is
        swapped for a different one, though not for a retrain of identical shape and file name."""
        entries = listed_models(await self._get("/v1/models", timeout))
        props: dict[str, Any] | None
        try:
            props = await self._get("/props", min(timeout, 5.0))
        except BackendError:
            props = None
        kind, version = "openai", None
        if props is not None:
            kind, version = "llama.cpp", text_field(props.get("build_info"))
        else:
            try:  # vLLM (and SGLang) answer GET /version
                version = text_field((await self._get("/version", min(timeout, 5.0))).get("version"))
            except BackendError:
                pass
            if any(e.get("owned_by") == "vllm" for e in entries.values()):
                kind = "vllm"
        described: dict[str, Any] = {}
        for model in models:
            entry = entries.get(model) or _aliased(entries, model) or {}
            facts: dict[str, Any] = {"id": entry.get("id", model), "owned_by": entry.get("owned_by")}
            for name in ("root", "parent", "max_model_len"):
                if name in entry:
                    facts[name] = entry[name]
            if isinstance(entry.get("meta"), dict):
                facts["meta"] = {k: v for k, v in entry["meta"].items() if k != "n_ctx"}
            if props is not None and props.get("model_alias") in (model, facts["id"], None):
                path = text_field(props.get("model_path"))
                # The file name, not the path: the path names a home directory, not the weights.
                facts["model_file"] = posixpath.basename(path.replace("\\", "/")) if path else None
                facts["ftype"] = props.get("model_ftype")
                facts["chat_template_sha256"] = sha256_text(text_field(props.get("chat_template")))
            described[model] = {**facts, "digest": fingerprint(facts),
                                "digest_source": "/v1/models" + (" + /props" if props else "")}
            n_ctx = object_field(entry, "meta").get("n_ctx")
            if n_ctx is not None:  # a runtime setting, not the weights: kept out of the fingerprint
                described[model]["n_ctx"] = n_ctx
        return {"kind": kind, "version": version, "models": described}

    def _sampling(self, request: Request) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for name, value in request.options.items():
            if name in _OLLAMA_ONLY:
                continue
            payload[_RENAMES.get(name, name)] = value
        fmt = response_format(request.format)
        if fmt is not None:
            payload["response_format"] = fmt
        payload.update(request.extra)
        return payload

    async def send(self, request: Request, timeout: float) -> Reply:
        if request.endpoint == "embed":
            return await self._embed(request, timeout)
        payload: dict[str, Any] = {"model": request.model, **self._sampling(request)}
        if request.endpoint == "generate":
            payload["prompt"] = request.prompt
            data, rate = await self._post_rated("/v1/completions", payload, timeout)
            choice = _first_choice(data)
            text = text_field(choice.get("text"))
        else:
            payload["messages"] = request.messages
            data, rate = await self._post_rated("/v1/chat/completions", payload, timeout)
            choice = _first_choice(data)
            text = text_field(object_field(choice, "message").get("content"))
        if text is None:
            raise BackendError("answer has no text (choices[0].message.content missing)",
                               retryable=True, kind="protocol")
        usage = object_field(data, "usage")
        timings = object_field(data, "timings")  # llama.cpp adds these
        return Reply(
            text=text,
            prompt_eval_count=count_field(usage.get("prompt_tokens")),
            eval_count=count_field(usage.get("completion_tokens")),
            eval_duration=ms_field(timings.get("predicted_ms")),
            prompt_eval_duration=ms_field(timings.get("prompt_ms")),
            done_reason=text_field(choice.get("finish_reason")),
            model=text_field(data.get("model")),
            raw=data,
            rate=rate,
        )

    async def stream(self, request: Request, timeout: float) -> Streamed:
        """The same call with ``"stream": true``: server-sent events, one delta each; usage is
        asked for in a last event (``stream_options.include_usage``, which vLLM and llama.cpp know).
        A server that sends no usage leaves the token counts None rather than guessing them."""
        payload: dict[str, Any] = {"model": request.model, **self._sampling(request), "stream": True,
                                   "stream_options": {"include_usage": True}}
        generate = request.endpoint == "generate"
        if generate:
            payload["prompt"] = request.prompt
            path = "/v1/completions"
        else:
            payload["messages"] = request.messages
            path = "/v1/chat/completions"
        pieces: list[str] = []
        first: float | None = None
        usage: dict[str, Any] = {}
        timings: dict[str, Any] = {}
        finish = model = None
        chunks = 0
        elapsed = 0.0
        done = False
        async for at, line in self._stream_lines(path, payload, timeout):
            if done or not line.startswith(b"data:"):
                continue  # SSE comments; after [DONE], read to the end so the connection is reusable
            elapsed = at
            data_text = line[5:].strip()
            if data_text == b"[DONE]":
                done = True
                continue
            event = self._stream_event(path, data_text)
            if event is None:
                continue
            model = text_field(event.get("model")) or model
            usage = object_field(event, "usage") or usage
            timings = object_field(event, "timings") or timings  # llama.cpp, on the last event
            for choice in list_field(event, "choices"):
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                piece = text_field(choice.get("text") if generate else object_field(choice, "delta").get("content"))
                if piece:
                    chunks += 1
                    pieces.append(piece)
                    if first is None:
                        first = elapsed
                finish = text_field(choice.get("finish_reason")) or finish
        reply = Reply(
            text="".join(pieces), prompt_eval_count=count_field(usage.get("prompt_tokens")),
            eval_count=count_field(usage.get("completion_tokens")),
            eval_duration=ms_field(timings.get("predicted_ms")),
            prompt_eval_duration=ms_field(timings.get("prompt_ms")),
            done_reason=finish, model=model, raw={"usage": usage, "timings": timings} if usage or timings else None,
        )
        return Streamed(reply=reply, first_token=first, seconds=elapsed, chunks=chunks)

    async def _embed(self, request: Request, timeout: float) -> Reply:
        payload: dict[str, Any] = {"model": request.model, "input": request.inputs or []}
        # dimensions, encoding_format... but not Ollama's truncate, which no OpenAI server knows.
        payload.update((k, v) for k, v in request.extra.items() if k != "truncate")
        # Vectors as base64 float32 rather than JSON numbers (OpenAI, vLLM, llama.cpp): a fifth of the
        # bytes, and decoding is a copy instead of parsing 768 numbers per text, which is what limits a
        # client feeding a GPU. A server that refuses the field is asked in floats from then on.
        asked_base64 = self._base64_embeddings and "encoding_format" not in payload
        if asked_base64:
            payload["encoding_format"] = "base64"
        try:
            data, rate = await self._post_rated("/v1/embeddings", payload, timeout)
        except BackendError as exc:
            if asked_base64 and exc.status in (400, 422) and "encoding_format" in str(exc):
                self._base64_embeddings = False
                return await self._embed(request, timeout)
            raise
        rows = [row for row in list_field(data, "data") if isinstance(row, dict)]
        rows.sort(key=lambda row: count_field(row.get("index")) or 0)
        return Reply(
            embeddings=[_vector(row.get("embedding")) for row in rows],
            prompt_eval_count=count_field(object_field(data, "usage").get("prompt_tokens")),
            model=text_field(data.get("model")),
            rate=rate,
        )


def _aliased(entries: dict[str, dict[str, Any]], model: str) -> dict[str, Any] | None:
    """llama.cpp lists aliases beside the id; any name it answers to finds the entry."""
    for entry in entries.values():
        if model in list_field(entry, "aliases"):
            return entry
    return None


def _vector(value: Any) -> Any:
    """A base64 embedding as a float32 array; a JSON list (a server ignoring base64) as it is.

    numpy is imported here, not at the top: it costs a tenth of a second at every CLI start, and
    only embedding runs need it."""
    if isinstance(value, str):
        import numpy as np
        try:
            return np.frombuffer(base64.b64decode(value), dtype="<f4")
        except (ValueError, binascii.Error):
            raise BackendError("embedding is neither a list of numbers nor base64 float32",
                               retryable=True, kind="protocol") from None
    return value


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = list_field(data, "choices")
    if not choices or not isinstance(choices[0], dict):
        raise BackendError("answer has no choices", retryable=True, kind="protocol")
    return choices[0]


def listed_models(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``/v1/models``'s entries by id. A listing of another shape (``data`` no list, an entry no object,
    an id no string) is the server's fault: a BackendError naming it, and the fleet skips the server."""
    raw = listing.get("data")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise BackendError(f"malformed /v1/models: data is {type(raw).__name__}, not a list", kind="protocol")
    entries: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(raw):
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str):
            raise BackendError(f"malformed /v1/models: data[{i}] has no id (a string)", kind="protocol")
        if model_id:
            entries[model_id] = entry
    return entries
