"""Ollama's native API: /api/chat, /api/generate, /api/embed, /api/tags, /api/version, /api/show.

Field names follow Ollama's API docs. Requests are sent with ``"stream": false`` so one HTTP answer
carries the whole result with its counters (eval_count, eval_duration, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..requests import Request
from .base import Backend, BackendError, Reply, ServerInfo, Streamed, sha256_text

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
        for entry in tags.get("models") or []:
            name = entry.get("name") or entry.get("model")
            if name:
                models[ollama_model_name(name)] = {
                    "digest": entry.get("digest"), "size": entry.get("size"),
                    "details": entry.get("details") or {},
                }
        return ServerInfo(models=models, version=version.get("version"))

    async def show(self, model: str, timeout: float) -> dict[str, Any]:
        """Model details (/api/show), used for provenance."""
        return await self._post("/api/show", {"model": model}, timeout)

    async def describe(self, models: Sequence[str], timeout: float) -> dict[str, Any]:
        """The server's version, and per model the digest from /api/tags (the sha256 Ollama names the
        model's manifest by: it changes whenever `ollama pull` brings a different build) plus what
        /api/show says about its quantisation, parameters and prompt template."""
        version = (await self._get("/api/version", timeout)).get("version")
        tags = await self._get("/api/tags", timeout)
        listed = {ollama_model_name(e.get("name") or e.get("model") or ""): e
                  for e in tags.get("models") or [] if isinstance(e, dict)}
        described: dict[str, Any] = {}
        for model in models:
            entry = listed.get(ollama_model_name(model), {})
            facts: dict[str, Any] = {
                "name": entry.get("name") or model, "digest": entry.get("digest") or None,
                "digest_source": "/api/tags", "size": entry.get("size"),
                "modified_at": entry.get("modified_at"), "details": entry.get("details") or {},
            }
            try:
                shown = await self.show(model, timeout)
            except BackendError as exc:
                facts["show_error"] = str(exc)
            else:
                info = shown.get("model_info") or {}
                arch = info.get("general.architecture")
                facts.update({
                    "details": shown.get("details") or facts["details"],
                    "parameters": shown.get("parameters"),
                    "template_sha256": sha256_text(shown.get("template")),
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
            data = await self._post("/api/generate", payload, timeout)
            text = data.get("response")
        else:
            payload["messages"] = request.messages
            data = await self._post("/api/chat", payload, timeout)
            text = (data.get("message") or {}).get("content")
        if text is None:
            raise BackendError("answer has no text (missing message.content / response)",
                               retryable=True, kind="protocol")
        return Reply(
            text=text,
            prompt_eval_count=data.get("prompt_eval_count"),
            eval_count=data.get("eval_count"),
            eval_duration=data.get("eval_duration"),
            prompt_eval_duration=data.get("prompt_eval_duration"),
            total_duration=data.get("total_duration"),
            load_duration=data.get("load_duration"),
            done_reason=data.get("done_reason"),
            model=data.get("model"),
            raw=data,
        )

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
            piece = data.get("response") if request.endpoint == "generate" else (
                (data.get("message") or {}).get("content"))
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
        reply = Reply(
            text="".join(pieces), prompt_eval_count=final.get("prompt_eval_count"),
            eval_count=final.get("eval_count"), eval_duration=final.get("eval_duration"),
            prompt_eval_duration=final.get("prompt_eval_duration"),
            total_duration=final.get("total_duration"), load_duration=final.get("load_duration"),
            done_reason=final.get("done_reason"), model=final.get("model"), raw=final,
        )
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
        return Reply(
            embeddings=data.get("embeddings"),
            prompt_eval_count=data.get("prompt_eval_count"),
            total_duration=data.get("total_duration"),
            load_duration=data.get("load_duration"),
            model=data.get("model"),
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
            vectors.append(data.get("embedding"))
        return Reply(embeddings=vectors, model=request.model)
