"""A lean HTTP/1.1 client for plain-http LLM servers: keep-alive pools and httptools' C parser.

Why not aiohttp for everything: when a server answers in microseconds (a cache, a small model, a
fleet), the client's CPU per request is the ceiling, and aiohttp's general-purpose request and
response objects cost about 100 µs each. LLM servers need little of HTTP: POST or GET, a JSON body,
a JSON answer with Content-Length or chunked encoding, keep-alive. This transport does exactly that
on asyncio protocols; https URLs and anything unusual still go through aiohttp.

Errors come out as `TransportError` with a kind ("connection", "timeout", "protocol") that the
backends turn into retryable `BackendError`s.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import httptools


class TransportError(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None = None


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Response]
    chunks: list[bytes] = field(default_factory=list)
    retry_after: str | None = None
    started: bool = False   # any byte of the answer arrived


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: _Pending | None = None
        self.closed = False
        self.keep_alive = True
        self._header_name = b""

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pending is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.pending.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"malformed HTTP answer: {exc}", "protocol"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending is not None:
            started = self.pending.started
            reason = f": {exc}" if exc else ""
            message = ("connection dropped mid-answer" if started else "connection closed before the answer")
            error = TransportError(message + reason, "connection")
            error.before_answer = not started  # type: ignore[attr-defined]
            self._fail(error)

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.pending is not None and name.lower() == b"retry-after":
            self.pending.retry_after = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.pending is not None:
            self.pending.chunks.append(body)

    def on_message_complete(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.future.done():
            return
        self.keep_alive = self.parser.should_keep_alive()
        body = pending.chunks[0] if len(pending.chunks) == 1 else b"".join(pending.chunks)
        pending.future.set_result(Response(self.parser.get_status_code(), body, pending.retry_after))

    # -- use ----------------------------------------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.pending is None
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending = _Pending(future)
        self.transport.write(data)
        return future

    def _fail(self, error: TransportError) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)

    @property
    def reusable(self) -> bool:
        return (not self.closed and self.keep_alive and self.pending is None
                and self.transport is not None and not self.transport.is_closing())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpTransport:
    """Keep-alive connection pools per host:port. Not thread-safe; one per event loop."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def request(self, host: str, port: int, method: str, path: str, headers: bytes,
                      body: bytes | None, timeout: float, connect_timeout: float = 10.0) -> Response:
        """Send one request. ``headers`` is pre-encoded ``Name: value\\r\\n`` lines (Host included)."""
        data = b"".join((
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), headers,
            b"Content-Length: %d\r\n\r\n" % len(body) if body is not None else b"\r\n",
            body or b"",
        ))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in (1, 2):
            conn, reused = await self._acquire(host, port, min(connect_timeout, timeout))
            try:
                async with asyncio.timeout_at(deadline):
                    response = await conn.send(data)
            except TimeoutError:
                conn.close()
                raise TransportError(f"timed out after {timeout:g}s", "timeout") from None
            except TransportError as exc:
                conn.close()
                # A kept-alive connection the server had already closed: nothing was processed, so
                # one more try on a fresh connection is safe.
                if reused and attempt == 1 and getattr(exc, "before_answer", False):
                    continue
                raise
            except BaseException:
                conn.close()  # cancelled mid-request: the connection's state is unknown
                raise
            self._release(host, port, conn)
            return response
        raise AssertionError("unreachable")

    async def _acquire(self, host: str, port: int, connect_timeout: float) -> tuple[_Connection, bool]:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn, True
            self._all.discard(conn)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            raise TransportError(f"connect to {host}:{port} timed out", "connection") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                                 "connection") from None
        self._all.add(conn)
        return conn, False

    def _release(self, host: str, port: int, conn: _Connection) -> None:
        if conn.reusable:
            self._idle.setdefault((host, port), deque()).append(conn)
        else:
            conn.close()
            self._all.discard(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()
