"""Ollama's native API: /api/chat, /api/generate, /api/embed, /api/tags, /api/version, /api/show.

Field names follow Ollama's API docs. Requests are sent with ``"stream": false`` so one HTTP answer
carries the whole result with its counters (eval_count, eval_duration, ...).
"""

from __future__ import annotations

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
    object_field,
    sha256_text,
    text_field,
)

# Ollama generates without end by default (num_predict -1, shifting its context when full), and in
# JSON mode some models emit whitespace for ever, a known Ollama failure. A JSON ask with no limit of
# its own gets this one: a runaway answer then costs bounded time, fails the JSON check and is
# re-asked, instead of holding a slot until the timeout and getting the server benched. It is sent,
# not part of the request's key, and generous: real JSON answers are far shorter.
JSON_NUM_PREDICT = 4096


def ollama_model_name(name: str) -> str:
    """Ollama lists "llama3.2" as "llama3.2:latest"; compare names in that full form."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaBackend(Backend):
    kind = "ollama"
    _legacy_embed = False  # set once the server turns out to lack /api/embed

    async def probe(self, timeout: float) -> ServerInfo:
        version = await self._get("/api/version", timeout)
        tags = await self._get("/api/tags", timeout)
        models: dict[str, dict[str, Any]] = {}
        for name, entry in listed_models(tags).items():
            models[name] = {"digest": entry.get("digest"), "size": count_field(entry.get("size")),
                            "details": object_field(entry, "details")}
        return ServerInfo(models=models, version=text_field(version.get("version")))

    async def show(self, model: str, timeout: float) -> dict[str, Any]:
        """Model details (/api/show), used for provenance."""
        return await self._post("/api/show", {"model": model}, timeout)

    async def describe(self, models: Sequence[str], timeout: float) -> dict[str, Any]:
        """The server's version, and per model the digest from /api/tags (the sha256 Ollama names the
        model's manifest by: it changes whenever `ollama pull` brings a different build) plus what
        /api/show says about its quantisation, parameters and prompt template."""
        version = text_field((await self._get("/api/version", timeout)).get("version"))
        listed = listed_models(await self._get("/api/tags", timeout))
        described: dict[str, Any] = {}
        for model in models:
            entry = listed.get(ollama_model_name(model), {})
            facts: dict[str, Any] = {
                "name": entry.get("name") or model, "digest": entry.get("digest") or None,
                "digest_source": "/api/tags", "size": count_field(entry.get("size")),
                "modified_at": text_field(entry.get("modified_at")), "details": object_field(entry, "details"),
            }
            try:
                shown = await self.show(model, timeout)
            except BackendError as exc:
                facts["show_error"] = str(exc)
            else:
                info = object_field(shown, "model_info")
                arch = text_field(info.get("general.architecture"))
                facts.update({
                    "details": object_field(shown, "details") or facts["details"],
                    "parameters": shown.get("parameters"),
                    "template_sha256": sha256_text(text_field(shown.get("template"))),
                    "context_length": info.get(f"{arch}.context_length") if arch else None,
                    "capabilities": shown.get("capabilities"),
                })
            described[model] = facts
        return {"kind": "ollama", "version": version, "models": described}

    def _common(self, request: Request) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": request.model, "stream": False}
        options = request.options
        if request.format is not None and "num_predict" not in options:
            options = {**options, "num_predict": JSON_NUM_PREDICT}
        if options:
            payload["options"] = options
        if request.format is not None:
            payload["format"] = request.format
        if request.keep_alive is not None:
            payload["keep_alive"] = request.keep_alive
        return payload

    async def send(self, request: Request, timeout: float) -> Reply:
        if request.endpoint == "embed":
            return await self._embed(request, timeout)
        payload = self._common(request)
        if request.endpoint == "generate":
            payload["prompt"] = request.prompt
            if request.system:
                payload["system"] = request.system
            data, rate = await self._post_rated("/api/generate", payload, timeout)
            text = text_field(data.get("response"))
        else:
            payload["messages"] = request.messages
            data, rate = await self._post_rated("/api/chat", payload, timeout)
            text = text_field(object_field(data, "message").get("content"))
        if text is None:
            raise BackendError("answer has no text (missing message.content / response)",
                               retryable=True, kind="protocol")
        reply = _reply(data, text)
        reply.rate = rate
        return reply

    async def stream(self, request: Request, timeout: float) -> Streamed:
        """The same call with ``"stream": true``: NDJSON chunks, the counters on the last (done) one."""
        payload = self._common(request)
        payload["stream"] = True
        if request.endpoint == "generate":
            payload["prompt"] = request.prompt
            if request.system:
                payload["system"] = request.system
            path = "/api/generate"
        else:
            payload["messages"] = request.messages
            path = "/api/chat"
        pieces: list[str] = []
        first: float | None = None
        final: dict[str, Any] | None = None
        chunks = 0
        elapsed = 0.0
        async for elapsed, line in self._stream_lines(path, payload, timeout):
            data = self._stream_event(path, line)
            if data is None:
                continue
            piece = text_field(data.get("response") if request.endpoint == "generate" else
                               object_field(data, "message").get("content"))
            if piece:
                chunks += 1
                pieces.append(piece)
                if first is None:
                    first = elapsed
            if data.get("done"):
                final = data
        if final is None:
            raise BackendError(f"the stream from {path} ended before its last chunk", retryable=True,
                               kind="protocol")
        reply = _reply(final, "".join(pieces))
        return Streamed(reply=reply, first_token=first, seconds=elapsed, chunks=chunks)

    async def _embed(self, request: Request, timeout: float) -> Reply:
        if self._legacy_embed:
            return await self._embed_one_by_one(request, timeout)
        payload: dict[str, Any] = {"model": request.model, "input": request.inputs or []}
        if request.options:
            payload["options"] = request.options
        if request.keep_alive is not None:
            payload["keep_alive"] = request.keep_alive
        payload.update(request.extra)  # truncate, dimensions
        try:
            data = await self._post("/api/embed", payload, timeout)
        except BackendError as exc:
            # Ollama before 0.3.4 has no /api/embed: a bare 404 (an unknown model is a 404 too,
            # but its message names the model). Remember it, so each batch costs one call less.
            if exc.status == 404 and "model" not in str(exc).lower():
                self._legacy_embed = True
                return await self._embed_one_by_one(request, timeout)
            raise
        embeddings = data.get("embeddings")
        if not isinstance(embeddings, list) or not all(isinstance(v, list) for v in embeddings):
            raise BackendError("answer has no embeddings (a list of vectors)", retryable=True, kind="protocol")
        return Reply(
            embeddings=embeddings,
            prompt_eval_count=count_field(data.get("prompt_eval_count")),
            total_duration=count_field(data.get("total_duration")),
            load_duration=count_field(data.get("load_duration")),
            model=text_field(data.get("model")),
        )

    async def _embed_one_by_one(self, request: Request, timeout: float) -> Reply:
        """Old Ollama servers only have /api/embeddings, one prompt per call."""
        vectors: list[Any] = []
        for text in request.inputs or []:
            payload: dict[str, Any] = {"model": request.model, "prompt": text}
            if request.options:
                payload["options"] = request.options
            if request.keep_alive is not None:
                payload["keep_alive"] = request.keep_alive
            data = await self._post("/api/embeddings", payload, timeout)
            vector = data.get("embedding")
            if not isinstance(vector, list):
                raise BackendError("answer has no embedding (a list of numbers)", retryable=True,
                                   kind="protocol")
            vectors.append(vector)
        return Reply(embeddings=vectors, model=request.model)


def _reply(data: dict[str, Any], text: str) -> Reply:
    """An answer's text and figures; a figure of the wrong type is left out (None), not an error."""
    return Reply(
        text=text,
        prompt_eval_count=count_field(data.get("prompt_eval_count")),
        eval_count=count_field(data.get("eval_count")),
        eval_duration=count_field(data.get("eval_duration")),
        prompt_eval_duration=count_field(data.get("prompt_eval_duration")),
        total_duration=count_field(data.get("total_duration")),
        load_duration=count_field(data.get("load_duration")),
        done_reason=text_field(data.get("done_reason")),
        model=text_field(data.get("model")),
        raw=data,
    )


def listed_models(tags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``/api/tags``'s models by full name. A listing of another shape (``"models": "x"``, an entry
    that is no object, a name that is no string, a digest that is no string) is the server's fault:
    it raises a BackendError naming what is wrong, and the fleet skips that server."""
    raw = tags.get("models")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise BackendError(f"malformed /api/tags: models is {type(raw).__name__}, not a list", kind="protocol")
    listed: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise BackendError(f"malformed /api/tags: models[{i}] is {type(entry).__name__}, not an object",
                               kind="protocol")
        name = entry.get("name") or entry.get("model")
        if not isinstance(name, str):
            raise BackendError(f"malformed /api/tags: models[{i}] has no name (a string), it has "
                               f"{name!r:.60}", kind="protocol")
        if not name:
            continue
        digest = entry.get("digest")
        if digest is not None and not isinstance(digest, str):
            raise BackendError(f"malformed /api/tags: the digest of {name} is {type(digest).__name__}, "
                               f"not a string", kind="protocol")
        listed[ollama_model_name(name)] = entry
    return listed
