"""The one HTTP interface corral talks through, its records, and the factory that picks a client.

Backends, the benchmark and `corral serve`'s pull only ever see `HttpClient`: which library moves
the bytes is decided here, once. Plain ``http://`` answers go through the lean client (`lean.py`:
half the client CPU per request of aiohttp, which is the ceiling when a server answers in
microseconds); https, streams and anything unusual through aiohttp (`aio.py`).
``CORRAL_HTTP=aiohttp`` sends everything through aiohttp, to compare or to rule the lean client out.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .aio import AioClient
    from .lean import LeanClient

# An answer bigger than this is an error, not a buffer: LLM answers are kilobytes, an embedding batch
# a few megabytes, and a server streaming without end must not take the client's memory with it.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_BODY_ENV = "CORRAL_MAX_ANSWER_BYTES"
HTTP_ENV = "CORRAL_HTTP"

ERROR_KINDS = ("connection", "timeout", "protocol", "too_large")


class HttpError(Exception):
    """A request that got no usable answer.

    ``kind``: "connection" (refused, reset, closed), "timeout", "protocol" (not valid HTTP) or
    "too_large" (the answer exceeds the client's cap). ``before_answer``: True when no byte of the
    answer arrived, False when it broke mid-answer, None when the library cannot tell."""

    def __init__(self, message: str, kind: str, *, before_answer: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.before_answer = before_answer


class Headers(Mapping[str, str]):
    """Answer headers with case-insensitive lookup (the last value wins for repeated names)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = {k.lower(): v for k, v in (items or {}).items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(slots=True)
class HttpResponse:
    """A whole answer. Redirects are answers too (never followed): the caller sees the 3xx."""

    status: int
    body: bytes
    headers: Headers


class HttpStream(Protocol):
    """An answer being received: status and headers first, then the body line by line."""

    status: int
    headers: Headers

    def lines(self) -> AsyncIterator[bytes]:
        """Each line of the body as it arrives, without its line ending (empty lines included)."""
        ...

    async def read(self) -> bytes:
        """The rest of the body at once (for an error answer)."""
        ...


class HttpClient(Protocol):
    """What corral needs of HTTP: one call with a whole answer, one streamed call, and closing."""

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, timeout: float) -> HttpResponse:
        """Send one request and read the whole answer; failures raise `HttpError`."""
        ...

    def stream(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
               body: bytes | None = None, timeout: float) -> AbstractAsyncContextManager[HttpStream]:
        """Send one request; the context gives the answer as it arrives. ``timeout`` covers it all."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


async def body_lines(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A body's lines (ended by ``\n`` or ``\r\n``) as its pieces arrive, whatever the cut between
    pieces; the last line may lack its newline. Both clients' streams read lines this way."""
    buffer = b""
    async for piece in pieces:
        buffer += piece
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if buffer:
        yield buffer.rstrip(b"\r")


async def body_bytes(pieces: AsyncIterator[bytes]) -> bytes:
    """A body read whole from its pieces."""
    return b"".join([piece async for piece in pieces])


def too_large(cap: int) -> HttpError:
    """The one wording of an oversize answer, on both clients."""
    return HttpError(f"answer larger than the {cap:,}-byte cap (set {MAX_BODY_ENV} to raise it)",
                     "too_large")


def max_body_from_env(default: int = DEFAULT_MAX_BODY) -> int:
    value = os.environ.get(MAX_BODY_ENV)
    if not value:
        return default
    try:
        cap = int(value)
    except ValueError:
        raise ValueError(f"{MAX_BODY_ENV}={value!r}: expected a number of bytes") from None
    if cap <= 0:
        raise ValueError(f"{MAX_BODY_ENV}={value!r}: expected a positive number of bytes")
    return cap


class RoutingClient:
    """Plain http through the lean client, the rest through aiohttp (created on first need, so a
    run against plain-http servers never imports aiohttp)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY, *, lean: bool = True) -> None:
        self.max_body = max_body
        self._lean: LeanClient | None = None
        self._aio: AioClient | None = None
        self._use_lean = lean

    @property
    def lean(self) -> LeanClient:
        if self._lean is None:
            from .lean import LeanClient
            self._lean = LeanClient(max_body=self.max_body)
        return self._lean

    @property
    def aio(self) -> AioClient:
        if self._aio is None:
            from .aio import AioClient
            self._aio = AioClient(max_body=self.max_body)
        return self._aio

    def client_for(self, url: str) -> HttpClient:
        """The client a whole-answer request to ``url`` goes through."""
        if self._use_lean and self.lean.accepts(url):
            return self.lean
        return self.aio

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, timeout: float) -> HttpResponse:
        return await self.client_for(url).request(method, url, headers=headers, body=body, timeout=timeout)

    def stream(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
               body: bytes | None = None, timeout: float) -> AbstractAsyncContextManager[HttpStream]:
        # The lean client reads whole answers only: streams (corral bench) go through aiohttp.
        return self.aio.stream(method, url, headers=headers, body=body, timeout=timeout)

    async def aclose(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        if self._aio is not None:
            await self._aio.aclose()


def default_client(max_body: int | None = None) -> HttpClient:
    """The client corral uses unless given one. ``max_body`` None: ``$CORRAL_MAX_ANSWER_BYTES`` or
    `DEFAULT_MAX_BODY`. ``CORRAL_HTTP=aiohttp`` routes everything through aiohttp (this is the only
    place that variable is read)."""
    cap = max_body if max_body is not None else max_body_from_env()
    return RoutingClient(cap, lean=os.environ.get(HTTP_ENV, "").strip().lower() != "aiohttp")
