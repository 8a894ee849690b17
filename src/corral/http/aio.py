"""The aiohttp client behind the `HttpClient` interface: https, streams, and everything with
``CORRAL_HTTP=aiohttp``.

aiohttp's own failures become `HttpError`s here and nowhere else, so callers handle one error type
whichever client carried the request. Redirects are not followed (a 3xx is returned as it is, as the
lean client does), and answers are read within the same size cap.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import aiohttp

from .client import DEFAULT_MAX_BODY, Headers, HttpError, HttpResponse, body_bytes, body_lines, too_large

_READ_CHUNK = 1 << 16


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """One ClientTimeout per distinct value, not one per request."""
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(10.0, seconds))


@contextmanager
def _errors(timeout: float) -> Iterator[None]:
    """aiohttp's failures as HttpErrors of the right kind."""
    try:
        yield
    except HttpError:
        raise
    except TimeoutError:  # aiohttp's ServerTimeoutError is one too
        raise HttpError(f"timed out after {timeout:g}s", "timeout") from None
    except aiohttp.ClientConnectorError as exc:
        raise HttpError(f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}",
                        "connection", before_answer=True) from None
    except aiohttp.ServerDisconnectedError as exc:
        raise HttpError(f"connection closed before the answer: {exc}", "connection") from None
    except aiohttp.ClientPayloadError as exc:
        raise HttpError(f"connection dropped mid-answer: {exc}", "connection",
                        before_answer=False) from None
    except aiohttp.ClientResponseError as exc:  # a malformed status line or headers
        raise HttpError(f"malformed HTTP answer: {exc.message}", "protocol") from None
    except aiohttp.ClientError as exc:
        raise HttpError(f"connection failed: {exc}", "connection") from None
    except OSError as exc:
        raise HttpError(f"connection failed: {exc}", "connection") from None


class _AioStream:
    def __init__(self, response: aiohttp.ClientResponse, max_body: int, timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.headers = Headers(response.headers)
        self._max_body = max_body
        self._timeout = timeout
        self._size = 0

    def _count(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_body:
            raise too_large(self._max_body)

    async def _pieces(self) -> AsyncIterator[bytes]:
        with _errors(self._timeout):
            while data := await self._response.content.readany():
                self._count(data)
                yield data

    def lines(self) -> AsyncIterator[bytes]:
        return body_lines(self._pieces())

    async def read(self) -> bytes:
        return await body_bytes(self._pieces())


class AioClient:
    """One aiohttp session, created on first use (it must be made inside the running loop)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            # No cookie jar: LLM servers set no cookies, and filtering them costs time on every request.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",))
        return self._session

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None, timeout: float) -> HttpResponse:
        with _errors(timeout):
            async with self.session.request(method, url, data=body, headers=headers,
                                            timeout=_timeout(timeout), allow_redirects=False) as resp:
                if resp.content_length is not None and resp.content_length > self.max_body:
                    raise too_large(self.max_body)
                answer = _AioStream(resp, self.max_body, timeout)
                data = await answer.read()
                return HttpResponse(resp.status, data, answer.headers)

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                     body: bytes | None = None, timeout: float) -> AsyncIterator[_AioStream]:
        with _errors(timeout):
            context = self.session.request(method, url, data=body, headers=headers,
                                           timeout=_timeout(timeout), allow_redirects=False)
            resp = await context.__aenter__()
        try:
            if resp.content_length is not None and resp.content_length > self.max_body:
                raise too_large(self.max_body)
            yield _AioStream(resp, self.max_body, timeout)
        finally:
            resp.release()  # back to the pool when read to the end, else the connection is closed

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
