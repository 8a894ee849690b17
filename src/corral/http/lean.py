"""A lean HTTP/1.1 client for plain-http LLM servers: keep-alive pools and httptools' C parser.

Why not aiohttp for everything: when a server answers in microseconds (a cache, a small model, a
fleet), the client's CPU per request is the ceiling, and aiohttp's general-purpose request and
response objects cost about as much again as this client does (178 vs 88 µs per request). LLM servers
need little of HTTP, but what they send must still be read right: Content-Length, chunked and
close-delimited bodies, HTTP/1.0, ``100 Continue``, gzip/deflate, redirects (returned, never
followed), and a cap on an answer's size.

Re-sending (see `LeanClient.request`): a request is only sent twice when the first copy cannot have
been processed.
"""

from __future__ import annotations

import asyncio
import select
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

from .client import DEFAULT_MAX_BODY, Headers, HttpError, HttpResponse, body_bytes, body_lines, too_large

# Methods whose second copy does no harm (RFC 9110 §9.2.2): only these are re-sent after being written.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# A connection idle longer than this is not reused. Servers commonly close idle connections after
# 5 s (uvicorn under vLLM, llama.cpp's cpp-httplib); a connection the server is closing at the very
# moment a request goes out is the one case where a POST could be lost, so it is not risked.
IDLE_SECONDS = 4.0
CONNECT_TIMEOUT = 10.0


class _Target(NamedTuple):
    host: str
    port: int
    path: bytes           # path and query, as sent on the request line
    host_header: bytes


@lru_cache(maxsize=1024)
def _target(url: str) -> _Target | None:
    """Where a URL goes, or None when it is not plain http this client handles (https, user:pass@)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or not parts.hostname or "@" in parts.netloc:
        return None
    host = parts.hostname
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    return _Target(host, port, path.encode("latin-1"), f"{shown}:{port}".encode("latin-1"))


@lru_cache(maxsize=256)
def _head(method: str, target: _Target, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The request line and headers, up to (not including) Content-Length: the same few per backend."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), target.path, target.host_header)]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers
                 if name.lower() not in ("host", "content-length"))
    return b"".join(lines)


class _Decoder:
    """Content-Encoding gzip or deflate, undone as the body arrives, within the size cap."""

    def __init__(self, encoding: str, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self.deflate = encoding == "deflate"
        self._z = zlib.decompressobj(zlib.MAX_WBITS if self.deflate else 16 + zlib.MAX_WBITS)
        self._first = True

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.cap - self.size + 1)
        except zlib.error:
            if not (self.deflate and self._first):
                raise HttpError("malformed compressed body", "protocol", before_answer=False) from None
            # "deflate" is meant as zlib-wrapped, but some servers send it raw.
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._z.decompress(data, self.cap - self.size + 1)
        self._first = False
        self.size += len(out)
        if self.size > self.cap or self._z.unconsumed_tail:
            raise too_large(self.cap)
        return out

    def flush(self) -> bytes:
        return self._z.flush()


class _Pending:
    """One request's answer as it is parsed. ``result`` resolves with the whole answer; in stream
    mode ``head`` resolves at the headers and body pieces queue up in ``pieces``."""

    __slots__ = ("chunks", "close_delimited", "decoder", "ended", "error", "head", "headers",
                 "headers_done", "pieces", "result", "size", "started", "status", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, streaming: bool) -> None:
        self.result: asyncio.Future[HttpResponse] | None = None if streaming else loop.create_future()
        self.head: asyncio.Future[tuple[int, Headers]] | None = loop.create_future() if streaming else None
        self.pieces: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.error: HttpError | None = None
        self.started = False         # any byte of the answer arrived
        self._new_message()

    def _new_message(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers: dict[str, str] = {}
        self.status = 0
        self.headers_done = False
        self.close_delimited = False
        self.decoder: _Decoder | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, on_lost: Callable[[_Connection], None], max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: _Pending | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self.fileno = -1
        self.key: tuple[str, int] = ("", 0)
        self._on_lost = on_lost
        self._max_body = max_body

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        if pending is None or pending.ended:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        pending.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an HttpError raised by a callback: too large, bad compression
            self._fail(cause if isinstance(cause, HttpError)
                       else HttpError(f"malformed HTTP answer: {exc}", "protocol", before_answer=False))
            self.close()

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self)
        pending = self.pending
        if pending is None or pending.ended:
            return
        if exc is None and pending.headers_done and pending.close_delimited:
            self._complete(pending)  # the body ends where the connection does (HTTP/1.0 style)
            return
        reason = f": {exc}" if exc else ""
        if pending.started:
            self._fail(HttpError("connection dropped mid-answer" + reason, "connection", before_answer=False))
        else:
            self._fail(HttpError("connection closed before the answer" + reason, "connection",
                                 before_answer=True))

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.pending is not None:
            self.pending._new_message()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.pending is not None:
            self.pending.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        pending = self.pending
        if pending is None:
            return
        status = self.parser.get_status_code()
        pending.status = status
        if 100 <= status < 200:
            return  # informational (100 Continue): the real answer follows
        pending.headers_done = True
        headers = pending.headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise too_large(self._max_body)
        pending.close_delimited = (length is None and "chunked" not in headers.get("transfer-encoding", "")
                                   and status not in (204, 304))
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            pending.decoder = _Decoder("deflate" if encoding == "deflate" else "gzip", self._max_body)
        elif encoding != "identity":
            raise HttpError(f"unsupported Content-Encoding {encoding!r}", "protocol", before_answer=False)
        if pending.head is not None and not pending.head.done():
            pending.head.set_result((status, Headers(headers)))

    def on_body(self, body: bytes) -> None:
        pending = self.pending
        if pending is None or not pending.headers_done:
            return
        pending.size += len(body)
        if pending.size > self._max_body:
            raise too_large(self._max_body)
        if pending.decoder is not None:
            body = pending.decoder.feed(body)
        if pending.result is not None:
            pending.chunks.append(body)
        elif body:
            pending.pieces.append(body)
            pending.wake()

    def on_message_complete(self) -> None:
        pending = self.pending
        if pending is None or not pending.headers_done:
            return  # the end of a 100 Continue: keep waiting for the answer
        self.keep_alive = self.parser.should_keep_alive()
        self._complete(pending)

    # -- use ----------------------------------------------------------------------------------------
    def _complete(self, pending: _Pending) -> None:
        if pending.decoder is not None:
            try:
                tail = pending.decoder.flush()
            except zlib.error:
                self._fail(HttpError("malformed compressed body", "protocol", before_answer=False))
                return
            if tail:
                (pending.chunks if pending.result is not None else pending.pieces).append(tail)
        pending.ended = True
        self.pending = None
        if pending.result is not None:
            if not pending.result.done():
                chunks = pending.chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                pending.result.set_result(HttpResponse(pending.status, body, Headers(pending.headers)))
        else:
            pending.wake()

    def send(self, data: bytes, streaming: bool = False) -> _Pending:
        assert self.transport is not None and self.pending is None
        self.pending = _Pending(asyncio.get_running_loop(), streaming)
        self.transport.write(data)
        return self.pending

    def _fail(self, error: HttpError) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.ended:
            return
        pending.ended = True
        pending.error = error
        for future in (pending.result, pending.head):
            if future is not None and not future.done():
                future.set_exception(error)
        pending.wake()

    @property
    def reusable(self) -> bool:
        return (not self.closed and self.keep_alive and self.pending is None
                and self.transport is not None and not self.transport.is_closing())

    def has_unread(self) -> bool:
        """Did anything (bytes or EOF) arrive while idle that the loop has not delivered yet?"""
        if self.fileno < 0:
            return False
        try:
            return bool(select.select([self.fileno], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _LeanStream:
    def __init__(self, client: LeanClient, conn: _Connection, pending: _Pending, deadline: float,
                 timeout: float, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self._client = client
        self._conn = conn
        self._pending = pending
        self._deadline = deadline
        self._timeout = timeout

    async def _next_piece(self) -> bytes | None:
        pending = self._pending
        while not pending.pieces:
            if pending.error is not None:
                raise pending.error
            if pending.ended:
                return None
            pending.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout_at(self._deadline):
                    await pending.waiter
            except TimeoutError:
                raise HttpError(f"timed out after {self._timeout:g}s", "timeout") from None
            finally:
                pending.waiter = None
        return pending.pieces.popleft()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while (piece := await self._next_piece()) is not None:
            yield piece

    def lines(self) -> AsyncIterator[bytes]:
        return body_lines(self._pieces())

    async def read(self) -> bytes:
        return await body_bytes(self._pieces())


class LeanClient:
    """Keep-alive connection pools per host:port. Not thread-safe; one per event loop.

    ``pool_size()`` counts the open connections: a connection that timed out, was reset or closed
    by the server leaves the pool at once."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY, *, connect_timeout: float = CONNECT_TIMEOUT,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.max_body = max_body
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.connections_opened = 0
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._all: set[_Connection] = set()

    @staticmethod
    def accepts(url: str) -> bool:
        return _target(url) is not None

    def pool_size(self) -> int:
        return len(self._all)

    def _encode(self, method: str, url: str, headers: Mapping[str, str] | None,
                body: bytes | None) -> tuple[_Target, bytes]:
        target = _target(url)
        if target is None:
            raise ValueError(f"the lean HTTP client takes plain http:// URLs only, not {url!r}")
        head = _head(method, target, tuple(headers.items()) if headers else ())
        if body is None:
            return target, head + b"\r\n"
        return target, b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, timeout: float) -> HttpResponse:
        """Send one request and read the whole answer.

        When a second copy is sent: a pooled connection is checked before anything is written on it
        (closed, closing, idle too long, or with bytes or an EOF waiting: it is dropped and another
        taken), so the usual case, a server that closed an idle connection, costs no copy at all.
        Once written, a request is sent again only if its method is idempotent (GET for probes), the
        connection was a reused one and not one byte of answer came back. A POST that was written
        is never re-sent here: whether the server ran it is unknown, and the caller's retry policy,
        which counts attempts, decides."""
        target, data = self._encode(method, url, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        replayable = method.upper() in IDEMPOTENT
        for attempt in (1, 2):
            conn, reused = await self._acquire(target, min(self.connect_timeout, timeout))
            pending = conn.send(data)
            assert pending.result is not None
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await pending.result
            except TimeoutError:
                self._drop(conn)
                raise HttpError(f"timed out after {timeout:g}s", "timeout",
                                before_answer=not pending.started) from None
            except HttpError as exc:
                self._drop(conn)
                if reused and replayable and attempt == 1 and exc.before_answer:
                    continue
                raise
            except BaseException:
                self._drop(conn)  # cancelled mid-request: the connection's state is unknown
                raise
            self._release(target, conn)
            return answer
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                     body: bytes | None = None, timeout: float) -> AsyncIterator[_LeanStream]:
        """One request whose body is read as it arrives; never re-sent."""
        target, data = self._encode(method, url, headers, body)
        deadline = asyncio.get_running_loop().time() + timeout
        conn, _ = await self._acquire(target, min(self.connect_timeout, timeout))
        pending = conn.send(data, streaming=True)
        assert pending.head is not None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    status, answer_headers = await pending.head
            except TimeoutError:
                raise HttpError(f"timed out after {timeout:g}s", "timeout",
                                before_answer=not pending.started) from None
            yield _LeanStream(self, conn, pending, deadline, timeout, status, answer_headers)
        except BaseException:
            self._drop(conn)
            raise
        if pending.ended and pending.error is None:
            self._release(target, conn)
        else:
            self._drop(conn)  # left before the end of the answer

    async def _acquire(self, target: _Target, connect_timeout: float) -> tuple[_Connection, bool]:
        key = (target.host, target.port)
        idle = self._idle.get(key)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                if conn.reusable and now - conn.idle_since < self.idle_seconds and not conn.has_unread():
                    return conn, True
                self._drop(conn)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._forget, self.max_body), target.host, target.port)
        except TimeoutError:
            raise HttpError(f"connect to {target.host}:{target.port} timed out", "connection",
                            before_answer=True) from None
        except OSError as exc:
            raise HttpError(f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}",
                            "connection", before_answer=True) from None
        conn.key = key
        self.connections_opened += 1
        self._all.add(conn)
        return conn, False

    def _release(self, target: _Target, conn: _Connection) -> None:
        if conn.reusable:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(conn.key, deque()).append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        """Out of the pool: called on close and when the connection is lost."""
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle:
            try:
                idle.remove(conn)
            except ValueError:
                pass

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()

    async def aclose(self) -> None:
        self.close()
