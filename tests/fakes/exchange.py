"""What both protocols do with a request before and after their own part: count it, check the key,
parse and record the body, speak each API's error dialect, and make up the answer text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .core import ServerCore
from .wire import (
    INFERENCE_PATHS,
    Body,
    Reply,
    dummy_for_schema,
    dumps,
    is_int,
    loads,
    model_digest,
    prompts_of,
)


class Exchange(ServerCore):
    """Request plumbing shared by the Ollama and OpenAI routes."""

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        with self._lock:
            self._path_counts[request.path] += 1
        try:
            if request.path in self.missing_paths:
                raise web.HTTPNotFound()
            return await handler(request)
        except Reply as reply:
            if request.path in INFERENCE_PATHS:
                self._count_status(reply.status)
            return web.Response(status=reply.status, body=dumps(reply.payload),
                                content_type="application/json", charset="utf-8",
                                headers=reply.headers)
        except web.HTTPNotFound:
            return self._route_not_found()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _route_not_found(self) -> web.Response:
        if self.api == "ollama":  # gin's text answer
            return web.Response(status=404, text="404 page not found")
        if self.llamacpp:
            return web.Response(status=404, body=dumps({"error": {
                "code": 404, "message": "File Not Found", "type": "not_found_error"}}),
                content_type="application/json")
        return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type="application/json")

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._status_counts[status] += 1

    @staticmethod
    def _openai_style(request: web.Request) -> bool:
        return request.path.startswith("/v1/") or request.path in ("/health", "/props")

    def _error(self, request: web.Request, status: int, message: str, *,
               err_type: str | None = None, param: str | None = None,
               headers: dict[str, str] | None = None) -> Reply:
        """An error in the dialect of the endpoint: Ollama's flat {"error": msg} on /api/*, the
        OpenAI/vLLM {"error": {message, type, param, code}} object on /v1/*."""
        if not self._openai_style(request):
            return Reply(status, {"error": message}, headers)
        if err_type is None:
            err_type = {400: "BadRequestError", 401: "authentication_error", 404: "NotFoundError",
                        429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                     else "invalid_request_error")
        return Reply(status, {"error": {"message": message, "type": err_type, "param": param,
                                         "code": status}}, headers)

    def _check_auth(self, request: web.Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            if self._openai_style(request):
                raise self._error(request, 401, "Invalid API key", err_type="authentication_error")
            raise Reply(401, {"error": "unauthorized"})

    async def _read_body(self, request: web.Request) -> Body:
        raw = await request.read()
        if not raw.strip():
            raise self._error(request, 400, "missing request body")
        try:
            body = loads(raw)
        except ValueError as exc:
            raise self._error(request, 400, f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise self._error(request, 400, f"json: cannot unmarshal {type(body).__name__} into "
                                            "a request object")
        return body

    async def _begin_inference(self, request: web.Request) -> Body:
        """Auth, parse and record an inference request."""
        self._check_auth(request)
        body = await self._read_body(request)
        with self._lock:
            self._requests.append((request.path, body))
            self._arrivals.append(time.monotonic())
            if self.record_path:
                prompts = " | ".join(prompts_of(request.path, body)).replace("\n", " ")
                with open(self.record_path, "a", encoding="utf-8") as record:
                    record.write(f"{request.path}\t{prompts}\n")
        if self.loading and self.api == "openai":
            raise Reply(503, {"error": {"code": 503, "message": "Loading model",
                                         "type": "unavailable_error"}})
        return body


    def _answer(self, body: Body, prompt: str, json_schema: Any, json_mode: bool,
                request: web.Request) -> str:
        responder = self.responder
        if responder is not None:
            try:
                return str(responder(body))
            except Exception as exc:  # a test's responder blowing up is a server error
                raise self._error(request, 500, f"responder failed: {exc!r}") from None
        if json_schema is not None:
            root = json_schema
            value = dummy_for_schema(json_schema, f"echo: {prompt}", root)
            return json.dumps(value if value is not None else {"echo": prompt})
        if json_mode:
            return json.dumps({"echo": prompt})
        return f"echo: {prompt}"


    def _weights(self, name: str) -> str:
        """What the served weights' digest is computed from: the name, plus its revision if any."""
        revision = self.revisions.get(name) or self.revisions.get(name.split(":")[0])
        return f"{name}@{revision}" if revision else name

    def _size(self, name: str) -> int:
        return 100_000_000 + int(model_digest(self._weights(name))[:8], 16) % 4_000_000_000


    def _dimensions(self, request: web.Request, body: Body) -> int:
        dims = body.get("dimensions")
        if dims is None:
            return self.embedding_dim
        if not is_int(dims) or dims < 1:
            raise self._error(request, 400, "dimensions must be a positive integer")
        return min(dims, self.embedding_dim)


    @staticmethod
    def _json(payload: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=dumps(payload), content_type="application/json",
                            charset="utf-8")
