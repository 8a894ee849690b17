"""Misbehaviour on demand: injected errors and 503s, slot limits and queues, latency, hangs, dropped
connections, slow bodies, runaway whitespace -- and ``Blackhole``, a port that never answers.

Real servers cannot be made to fail at a chosen moment, and corral's failover, retry and resume
code is only trustworthy if every one of these paths is exercised. Deaths (``kill``/``revive``)
are lifecycle, in ``core.py``; context overflows are each protocol's own answer, in ``ollama.py``
and ``openai.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http
import math
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from .exchange import Exchange
from .wire import HOST, OLLAMA_BUSY_MESSAGE, Body, format_retry_after, ollama_key

__all__ = ["Blackhole", "FaultInjection", "OLLAMA_BUSY_MESSAGE"]


class FaultInjection(Exchange):
    """The fault switches' effects: ``fail_next``/``fail_rate``, ``slots``/``max_queue``,
    ``latency``/``hang``, ``drop_rate``, ``slow_body``/``slow_rate``, ``endless_whitespace``, and
    hostile answers: ``answer_fields`` (fields of the wrong type) and ``tags_body`` (a bad listing)."""

    def fail_next(self, n: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """Fail exactly the next ``n`` inference requests with ``status`` (before fail_rate)."""
        with self._lock:
            self._fail_queue.extend([(status, retry_after)] * n)

    def _tampered(self, payload: Body) -> Body:
        """``payload`` with ``answer_fields`` set in it: a dotted path goes into nested objects
        (an object that is not one, or missing, becomes one), so a test can give any field any type."""
        fields = self.answer_fields
        if not fields:
            return payload
        payload = copy.deepcopy(payload)
        for path, value in fields.items():
            *parents, last = path.split(".")
            node = payload
            for name in parents:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
            node[last] = value
        return payload

    def _draw(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _inject_failure(self, request: web.Request) -> None:
        with self._lock:
            if self._fail_queue:
                status, retry_after = self._fail_queue.popleft()
            elif self.fail_rate > 0 and self._rng.random() < self.fail_rate:
                status, retry_after = self.fail_status, self.retry_after
            else:
                return
        headers = {"Retry-After": format_retry_after(retry_after)} if retry_after is not None else None
        message = self.fail_message
        if message is None:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            message = f"{phrase} (injected by fake server)"
        raise self._error(request, status, message, headers=headers)

    @contextlib.asynccontextmanager
    async def _slot(self, request: web.Request, model: str | None = None) -> AsyncIterator[None]:
        """Hold one of ``slots`` (like OLLAMA_NUM_PARALLEL); queue or refuse when all are busy."""
        lane = ollama_key(model) if model is not None and self._model_sems else None
        sem = self._sem if lane is None else self._model_sems.get(lane)
        if sem is not None:
            if sem.locked() and self.max_queue is not None and self._queued_for[lane] >= self.max_queue:
                raise self._error(request, 503, OLLAMA_BUSY_MESSAGE, err_type="server_error")
            with self._lock:
                self._queued += 1
                self._queued_for[lane] += 1
                if sem.locked():  # it waits: every slot is taken
                    self._max_queued = max(self._max_queued, self._queued)
            try:
                await sem.acquire()
            finally:
                with self._lock:
                    self._queued -= 1
                    self._queued_for[lane] -= 1
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        gauge = self.gauge
        if gauge is not None:
            gauge.enter()
        try:
            yield
        finally:
            if gauge is not None:
                gauge.leave()
            with self._lock:
                self._in_flight -= 1
            if sem is not None:
                sem.release()

    async def _work(self, body: Body) -> None:
        """Hang or sleep as configured; runs while holding a slot."""
        if self.hang:
            await asyncio.Event().wait()  # until the client leaves, kill() or stop()
        latency = self.latency
        delay = latency(body) if callable(latency) else latency
        if delay and delay > 0:
            await asyncio.sleep(delay)

    def _extra_headers(self) -> dict[str, str] | None:
        extra = self.answer_headers
        if extra is None:
            return None
        return dict(extra() if callable(extra) else extra)

    async def _send(self, request: web.Request, parts: list[bytes], content_type: str,
                    streaming: bool) -> web.StreamResponse:
        """Send a 200 answer, honouring drop_rate (cut the body, reset the connection) and
        slow_body (dribble the body over that many seconds)."""
        drop = self._draw(self.drop_rate)
        slow = self.slow_body if self.slow_body and (
            self.slow_rate >= 1 or self._draw(self.slow_rate)) else 0.0
        if not drop and not slow and not streaming:
            self._count_status(200)
            with self._lock:
                self._completed += 1
            return web.Response(body=parts[0], content_type=content_type.split(";")[0],
                                charset="utf-8" if "charset" in content_type else None,
                                headers=self._extra_headers())
        payload = b"".join(parts)
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = content_type
        if not streaming:
            resp.content_length = len(payload)  # so a truncated body is detectable
        await resp.prepare(request)
        self._count_status(200)
        if drop:
            if streaming and len(parts) > 1:
                cut = len(b"".join(parts[: len(parts) // 2]))
            else:
                cut = max(1, len(payload) // 2)
            payload = payload[:cut]
        if slow:  # ~20 pieces spread over `slow` seconds
            size = math.ceil(len(payload) / max(1, min(20, len(payload))))
            chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
        elif streaming and not drop:
            chunks = parts
        else:
            chunks = [payload]
        for index, chunk in enumerate(chunks):
            if slow:
                await asyncio.sleep(slow / len(chunks))
            if index == len(chunks) - 1 and not drop:
                break
            await resp.write(chunk)
        if drop:
            with self._lock:
                self._dropped += 1
            transport = request.transport
            for _ in range(100):  # let the partial body leave before the reset
                if transport is None or transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.001)
            if transport is not None:
                transport.abort()
            return resp
        # Count before the last byte leaves: a client holding the whole answer must see it counted.
        with self._lock:
            self._completed += 1
        try:
            await resp.write(chunks[-1])
            await resp.write_eof()
        except BaseException:
            with self._lock:
                self._completed -= 1
            raise
        return resp

    async def _runaway(self, limit: int | None) -> tuple[str, int, bool]:
        """Whitespace until ``limit`` tokens: (text, tokens, cut). With no limit (Ollama's default
        num_predict -1) it never ends, as on the real server: the client must give up."""
        if limit is None or limit <= 0:
            await asyncio.Event().wait()  # until the client leaves, kill() or stop()
        assert limit is not None
        return "\n" * limit, limit, True



class Blackhole:
    """A port that accepts TCP connections and never sends a byte: not even the probes are answered.

    The socket listens but never calls accept(): the kernel completes each handshake and queues the
    connection, so a client connects and writes happily, then waits for ever.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(512)
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
