"""The OpenAI-compatible API, as vLLM, llama.cpp's server and Ollama's /v1 serve it: /v1/models,
/v1/chat/completions, /v1/completions, /v1/embeddings, and the servers' own probes (/health,
vLLM's /version, llama.cpp's /props).

Objects follow OpenAI's chat-completion / completion / embedding / model schemas; errors follow
vLLM's ``{"error": {message, type, param, code}}`` and its context-length wording, or llama.cpp's
(``exceed_context_size_error``, ``timings``, ``/props``) with ``llamacpp=True``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .faults import FaultInjection
from .wire import (
    CREATED,
    Body,
    Reply,
    count_tokens,
    dumps,
    fake_embedding,
    is_int,
    last_user_text,
    limit_tokens,
    messages_tokens,
    ollama_key,
    stream_pieces,
)


class OpenAIApi(FaultInjection):
    """The /v1/* route handlers (on both kinds of server) and the vLLM / llama.cpp probes."""

    async def _h_health(self, request: web.Request) -> web.Response:
        if self.loading:
            return web.Response(status=503, body=dumps({"error": {
                "code": 503, "message": "Loading model", "type": "unavailable_error"}}),
                content_type="application/json")
        return self._json({"status": "ok"})

    async def _h_vllm_version(self, request: web.Request) -> web.Response:
        if self.llamacpp:  # llama.cpp has no /version; vLLM answers {"version": "0.8.5"}
            return self._route_not_found()
        return self._json({"version": self.version})

    def _gguf_file(self, model: str) -> str:
        revision = self.revisions.get(model)
        return f"{model}-{revision}.Q4_K_M.gguf" if revision else f"{model}.Q4_K_M.gguf"

    async def _h_props(self, request: web.Request) -> web.Response:
        if not self.llamacpp:
            return self._route_not_found()
        n_ctx = self.max_context_tokens or 4096
        model = self.models[0]
        return self._json({
            "default_generation_settings": {
                "id": 0, "id_task": -1, "n_ctx": n_ctx, "speculative": False,
                "is_processing": False,
                "params": {"n_predict": -1, "seed": 4294967295, "temperature": 0.8, "top_k": 40,
                           "top_p": 0.95, "min_p": 0.05, "stream": False},
            },
            "total_slots": (sum(self.slots.values()) if isinstance(self.slots, Mapping) else self.slots) or 1,
            "model_alias": model,
            "model_ftype": "Q4_K_M",
            "model_path": f"/models/{self._gguf_file(model)}",
            "modalities": {"vision": False, "audio": False},
            "chat_template": "{% for message in messages %}{{ message.content }}{% endfor %}",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "build_info": f"b0000-fake-{self.version}",
        })

    async def _h_models(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        if self.api == "ollama":
            data = [{"id": n, "object": "model", "created": CREATED, "owned_by": "library"}
                    for n in self._ollama_names.values()]
        else:
            owner = "llamacpp" if self.llamacpp else "vllm"
            data = []
            for name in self.models:
                entry: Body = {"id": name, "object": "model", "created": CREATED, "owned_by": owner}
                if self.llamacpp:  # llama.cpp's /v1/models: aliases, and the GGUF's metadata
                    entry["aliases"] = [name]
                    entry["meta"] = {
                        "vocab_type": 2, "n_vocab": 128256, "n_ctx": self.max_context_tokens or 4096,
                        "n_ctx_train": 131072, "n_embd": self.embedding_dim, "n_params": 3_212_749_888,
                        "size": self._size(self._gguf_file(name)), "ftype": "Q4_K_M"}
                else:
                    entry.update({"root": name, "parent": None,
                                  "max_model_len": self.max_context_tokens or 4096})
                data.append(entry)
        return self._json({"object": "list", "data": data})

    def _openai_model(self, request: web.Request, body: Body) -> str:
        model = body.get("model")
        if model is None:
            return self.models[0]  # vLLM and llama.cpp fall back to the served model
        if not isinstance(model, str):
            raise self._error(request, 400, "model must be a string", param="model")
        if self.api == "ollama":
            if ollama_key(model) not in self._ollama_names:
                raise self._error(request, 404, f'model "{model}" not found, try pulling it first',
                                  err_type="api_error", param="model")
        elif self.strict_models and model not in self.models:
            raise self._error(request, 404, f"The model `{model}` does not exist.",
                              err_type="NotFoundError", param="model")
        return model

    def _openai_sampling(self, request: web.Request, body: Body) -> tuple[int | None, int, Any, bool]:
        """Validate max_tokens/n/seed/response_format: (max_tokens, n, json schema, json mode)."""
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
            raise self._error(request, 400, f"max_tokens must be at least 1, got {max_tokens}.",
                              param="max_tokens")
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not is_int(n) or n < 1:
            raise self._error(request, 400, f"n must be at least 1, got {n}.", param="n")
        seed = body.get("seed")
        if seed is not None and not is_int(seed):
            raise self._error(request, 400, "seed must be an integer", param="seed")
        fmt = body.get("response_format")
        if fmt is None:
            return max_tokens, n, None, False
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return max_tokens, n, None, False
        if kind == "json_object":
            return max_tokens, n, None, True
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise self._error(request, 400, "response_format.json_schema must be an object "
                                                "with a 'schema'", param="response_format")
            return max_tokens, n, spec.get("schema", {}), True
        raise self._error(request, 400, "response_format.type must be one of 'text', "
                                        "'json_object', 'json_schema'", param="response_format")

    def _check_context(self, request: web.Request, prompt_tokens: int, max_tokens: int | None,
                       chat: bool) -> None:
        limit = self.max_context_tokens
        if limit is None or prompt_tokens <= limit:
            return
        completion = max_tokens or 0
        if self.llamacpp:  # tools/server/server.cpp: the prompt alone does not fit a slot
            raise Reply(400, {"error": {
                "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens,
                "n_ctx": limit,
                "message": "the request exceeds the available context size, try increasing it"}})
        if chat:
            message = (f"This model's maximum context length is {limit} tokens. However, you "
                       f"requested {prompt_tokens + completion} tokens ({prompt_tokens} in the "
                       f"messages, {completion} in the completion). Please reduce the length of "
                       "the messages or completion.")
        else:
            message = (f"This model's maximum context length is {limit} tokens, however you "
                       f"requested {prompt_tokens + completion} tokens ({prompt_tokens} in your "
                       f"prompt; {completion} for the completion). Please reduce your prompt; or "
                       "completion length.")
        raise self._error(request, 400, message, err_type="BadRequestError",
                          param="messages" if chat else "prompt")

    def _completion_id(self, prefix: str, body: Body, prompt: str) -> str:
        seed = body.get("seed")
        if seed is None:
            return f"{prefix}-{uuid.uuid4().hex}"
        return f"{prefix}-{hashlib.sha256(f'{seed}:{prompt}'.encode()).hexdigest()[:32]}"

    def _timings(self, prompt_tokens: int, completion_tokens: int) -> dict[str, float | int]:
        prompt_ms = 0.05 + 0.15 * prompt_tokens
        predicted_ms = 1.0 + 8.0 * completion_tokens
        return {"prompt_n": prompt_tokens, "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / max(prompt_tokens, 1),
                "prompt_per_second": 1000.0 * prompt_tokens / prompt_ms,
                "predicted_n": completion_tokens, "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / max(completion_tokens, 1),
                "predicted_per_second": 1000.0 * completion_tokens / predicted_ms}

    async def _h_openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) for m in messages):
            raise self._error(request, 400, "messages must be a non-empty list of message objects",
                              param="messages")
        model = self._openai_model(request, body)
        max_tokens, n, schema, json_mode = self._openai_sampling(request, body)
        prompt = last_user_text(messages)
        prompt_tokens = messages_tokens(messages)
        self._check_context(request, prompt_tokens, max_tokens, chat=True)
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            if self.endless_whitespace and json_mode:
                room = (self.max_context_tokens or 4096) - prompt_tokens
                text, completion_tokens, cut = await self._runaway(max_tokens or max(room, 1))
            else:
                text = self._answer(body, prompt, schema, json_mode, request)
                text, completion_tokens, cut = limit_tokens(text, max_tokens)
            reason = "length" if cut else "stop"
            ident = self._completion_id("chatcmpl", body, prompt)
            created = int(time.time())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * n,
                     "total_tokens": prompt_tokens + completion_tokens * n}
            if body.get("stream") is True:
                events: list[Body] = []
                head = {"id": ident, "object": "chat.completion.chunk", "created": created,
                        "model": model}
                for index in range(n):
                    events.append({**head, "choices": [{"index": index, "delta": {
                        "role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
                    for piece in stream_pieces(text):
                        events.append({**head, "choices": [{"index": index, "delta": {
                            "content": piece}, "logprobs": None, "finish_reason": None}]})
                    events.append({**head, "choices": [{"index": index, "delta": {},
                                                        "logprobs": None, "finish_reason": reason}]})
                return await self._send_sse(request, events, body, head, usage)
            payload: Body = {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": reason} for i in range(n)],
                "usage": usage,
            }
            if self.llamacpp:
                payload["timings"] = self._timings(prompt_tokens, completion_tokens)
            return await self._send(request, [dumps(self._tampered(payload))], "application/json",
                                    streaming=False)

    async def _h_openai_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        raw = body.get("prompt")
        if isinstance(raw, str):
            prompts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
            prompts = list(raw)
        else:
            raise self._error(request, 400, "prompt must be a string or a list of strings",
                              param="prompt")
        model = self._openai_model(request, body)
        max_tokens, n, schema, json_mode = self._openai_sampling(request, body)
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        self._check_context(request, max(count_tokens(p) for p in prompts), max_tokens, chat=False)
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            choices = []
            completion_tokens = 0
            for prompt in prompts:
                text = self._answer({**body, "prompt": prompt}, prompt, schema, json_mode, request)
                text, count, cut = limit_tokens(text, max_tokens)
                for _ in range(n):
                    choices.append({"index": len(choices), "text": text, "logprobs": None,
                                    "finish_reason": "length" if cut else "stop"})
                    completion_tokens += count
            ident = self._completion_id("cmpl", body, prompts[0])
            created = int(time.time())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            if body.get("stream") is True:
                head = {"id": ident, "object": "text_completion", "created": created, "model": model}
                events = []
                for choice in choices:
                    for piece in stream_pieces(choice["text"]):
                        events.append({**head, "choices": [{"index": choice["index"], "text": piece,
                                                            "logprobs": None, "finish_reason": None}]})
                    events.append({**head, "choices": [{"index": choice["index"], "text": "",
                                                        "logprobs": None,
                                                        "finish_reason": choice["finish_reason"]}]})
                return await self._send_sse(request, events, body, head, usage)
            payload: Body = {"id": ident, "object": "text_completion", "created": created,
                             "model": model, "choices": choices, "usage": usage}
            if self.llamacpp:
                payload["timings"] = self._timings(prompt_tokens, completion_tokens)
            return await self._send(request, [dumps(self._tampered(payload))], "application/json",
                                    streaming=False)

    async def _send_sse(self, request: web.Request, events: list[Body], body: Body, head: Body,
                        usage: Body) -> web.StreamResponse:
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events = [*events, {**head, "choices": [], "usage": usage}]
        parts = [b"data: " + dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        return await self._send(request, parts, "text/event-stream; charset=utf-8", streaming=True)

    async def _h_openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        elif isinstance(raw, list) and all(is_int(x) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenized input
        else:
            raise self._error(request, 400, "input must be a string or a list of strings",
                              param="input")
        model = self._openai_model(request, body)
        dims = self._dimensions(request, body)
        encoding = body.get("encoding_format", "float")
        if encoding not in (("float", "base64") if self.base64_embeddings else ("float",)):
            raise self._error(request, 400, f"encoding_format {encoding!r} is not supported; "
                              "use 'float'" if not self.base64_embeddings else
                              "encoding_format must be 'float' or 'base64'", param="encoding_format")
        limit = self.max_context_tokens
        too_long = [n for n in map(count_tokens, inputs) if limit and n > limit]
        if too_long and self.llamacpp:  # llama.cpp's words, with its 500
            raise self._error(request, 500, f"input ({too_long[0]} tokens) is too large to process. "
                              f"increase the physical batch size (current batch size: {limit})",
                              err_type="server_error")
        if too_long:
            raise self._error(request, 400, f"This model's maximum context length is {limit} tokens. "
                              f"However, you requested {too_long[0]} tokens in the input for "
                              "embedding generation. Please reduce the length of the input.",
                              err_type="BadRequestError", param="input")
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            data = []
            for index, text in enumerate(inputs):
                vector = fake_embedding(text, self.embedding_dim)[:dims]
                if dims < self.embedding_dim:
                    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                    vector = [x / norm for x in vector]
                if encoding == "base64":  # little-endian float32, as OpenAI, vLLM and llama.cpp send it
                    vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": vector})
            tokens = sum(count_tokens(text) for text in inputs)
            payload = {"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            return await self._send(request, [dumps(payload)], "application/json", streaming=False)
