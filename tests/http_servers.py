"""Tiny raw HTTP servers on 127.0.0.1 for the HTTP client conformance suite.

A real framework would tidy the bytes up; these write exactly what a test says (HTTP/1.0 answers,
``100 Continue``, close-delimited bodies, resets), and count what the client did: connections
accepted, connections the client has since closed, and every request received.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int   # which accepted connection (1, 2, ...) carried it


@dataclass(slots=True)
class Exchange:
    """One request as the handler sees it, with the means to answer it."""

    request: Received
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        """Close with a FIN."""
        self.writer.close()

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_for_client_close(self) -> None:
        """Never answer: wait until the client gives up and closes."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.server.closed_by_client += 1


# A handler answers one exchange and says whether to keep reading requests on the connection.
Handler = Callable[[Exchange], Awaitable[bool]]


@dataclass
class RawServer:
    handler: Handler
    accepted: int = 0
    closed_by_client: int = 0
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return self.accepted - self.closed_by_client

    def count(self, method: str) -> int:
        return sum(1 for r in self.received if r.method == method)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                received = Received(method, path, headers, body, number)
                self.received.append(received)
                exchange = Exchange(received, reader, writer, self)
                if not await self.handler(exchange):
                    if not writer.is_closing():
                        writer.close()
                    return
        except ConnectionError:
            return


def answer(status: int = 200, body: bytes = b"{}", *, headers: dict[str, str] | None = None,
           version: str = "HTTP/1.1", length: bool = True) -> bytes:
    """An answer's bytes, with Content-Length unless ``length`` is False."""
    lines = [f"{version} {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(status: int, pieces: list[bytes], headers: dict[str, str] | None = None) -> bytes:
    head = answer(status, b"", headers={**(headers or {}), "Transfer-Encoding": "chunked"}, length=False)
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


_REASONS = {100: "Continue", 200: "OK", 301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect",
            308: "Permanent Redirect", 404: "Not Found", 429: "Too Many Requests",
            503: "Service Unavailable"}
