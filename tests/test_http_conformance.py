"""Both HTTP clients (lean and aiohttp) against raw servers: the same bytes in, the same outcome out.

Each case is valid (or plainly broken) HTTP an LLM server or a proxy in front of one may send; the
servers live in `tests/http_servers.py` and count what the client did. Nothing here asserts a
duration: timeouts are checked by the error's kind.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import socket
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from corral.backends import BackendError, make_backend
from corral.config import ServerSpec
from corral.http import DEFAULT_MAX_BODY, HttpClient, HttpError, RoutingClient, default_client
from corral.http.aio import AioClient
from corral.http.lean import LeanClient
from corral.requests import Request

from .http_servers import Exchange, RawServer, answer, chunked

CLIENTS = ["lean", "aiohttp"]
JSON = {"Content-Type": "application/json"}


def make_client(kind: str, max_body: int = DEFAULT_MAX_BODY) -> HttpClient:
    return LeanClient(max_body=max_body) if kind == "lean" else AioClient(max_body=max_body)


LOOPS = ["asyncio", *(["uvloop"] if importlib.util.find_spec("uvloop") else [])]
_loop_factory: Any = None


@pytest.fixture(autouse=True, params=LOOPS)
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every case on asyncio's loop and on uvloop (the CLI's loop when installed: corral.runtime)."""
    global _loop_factory
    _loop_factory = None
    if request.param == "uvloop":
        import uvloop
        _loop_factory = uvloop.new_event_loop
    yield request.param
    _loop_factory = None


def run(handler: Callable[[Exchange], Awaitable[bool]], scenario: Callable[[RawServer], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with RawServer(handler) as server:
            return await scenario(server)
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(main())


def replying(data: bytes, keep: bool = True) -> Callable[[Exchange], Awaitable[bool]]:
    async def handler(ex: Exchange) -> bool:
        await ex.send(data)
        return keep
    return handler


async def one(kind: str, server: RawServer, method: str = "POST", path: str = "/api/chat",
              max_body: int = DEFAULT_MAX_BODY, timeout: float = 5.0) -> Any:
    client = make_client(kind, max_body)
    try:
        return await client.request(method, server.url + path, headers=JSON,
                                    body=b'{"x": 1}' if method == "POST" else None, timeout=timeout)
    finally:
        await client.aclose()


async def failure(kind: str, server: RawServer, **kw: Any) -> HttpError:
    with pytest.raises(HttpError) as info:
        await one(kind, server, **kw)
    return info.value


# ---- bodies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_content_length_body_headers_and_what_was_sent(kind: str) -> None:
    data = answer(200, b'{"ok": true}', headers={"Content-Type": "application/json", "X-Extra": "1"})
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == 200 and orjson.loads(got.body) == {"ok": True}
        assert got.headers.get("content-type") == got.headers["CONTENT-TYPE"] == "application/json"
        sent = server.received[0]
        assert (sent.method, sent.path, sent.body) == ("POST", "/api/chat", b'{"x": 1}')
        assert sent.headers["content-type"] == "application/json"
        assert sent.headers["content-length"] == "8" and sent.headers["host"] == f"127.0.0.1:{server.port}"
        assert "user-agent" not in sent.headers
    run(replying(data), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_chunked_body(kind: str) -> None:
    data = chunked(200, [b'{"message": ', b'{"content": "hi"}', b"}"])
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == 200 and orjson.loads(got.body) == {"message": {"content": "hi"}}
    run(replying(data), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("version, extra", [("HTTP/1.1", {"Connection": "close"}), ("HTTP/1.0", {})])
def test_close_delimited_body(kind: str, version: str, extra: dict[str, str]) -> None:
    """No Content-Length, not chunked: the body ends when the server closes the connection."""
    async def handler(ex: Exchange) -> bool:
        await ex.send(answer(200, b"", headers=extra, version=version, length=False))
        await ex.send(b'{"long": "')
        await ex.send(b'answer"}')
        await ex.close()
        return False
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == 200 and orjson.loads(got.body) == {"long": "answer"}
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_http_10_with_content_length_is_not_reused(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        for _ in range(2):
            got = await client.request("GET", server.url + "/", timeout=5)
            assert got.status == 200 and got.body == b'{"a": 1}'
        await client.aclose()
        assert server.accepted == 2  # HTTP/1.0 without keep-alive: one connection per answer
    run(replying(answer(200, b'{"a": 1}', version="HTTP/1.0"), keep=False), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_100_continue_before_the_answer(kind: str) -> None:
    async def handler(ex: Exchange) -> bool:
        await ex.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await ex.send(answer(200, b'{"after": "continue"}'))
        return True
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == 200 and orjson.loads(got.body) == {"after": "continue"}
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_body(kind: str, encoding: str) -> None:
    plain = orjson.dumps({"message": {"content": "x" * 5000}})
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == 200 and got.body == plain
    run(replying(answer(200, packed, headers={"Content-Encoding": encoding})), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_chunked_gzip_body(kind: str) -> None:
    plain = orjson.dumps({"n": list(range(2000))})
    packed = gzip.compress(plain)
    data = chunked(200, [packed[:100], packed[100:]], headers={"Content-Encoding": "gzip"})
    async def scenario(server: RawServer) -> None:
        assert (await one(kind, server)).body == plain
    run(replying(data), scenario)


# ---- statuses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_returned_not_followed(kind: str, status: int) -> None:
    data = answer(status, b'{"message": {"content": "not the answer"}}',
                  headers={"Location": "http://elsewhere.invalid/api/chat"})
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == status and got.headers.get("location") == "http://elsewhere.invalid/api/chat"
        assert len(server.received) == 1
    run(replying(data), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("status", [429, 503])
def test_error_status_with_retry_after(kind: str, status: int) -> None:
    data = answer(status, b'{"error": "busy"}', headers={"Retry-After": "7"})
    async def scenario(server: RawServer) -> None:
        got = await one(kind, server)
        assert got.status == status and got.headers.get("Retry-After") == "7"
        assert orjson.loads(got.body) == {"error": "busy"}
    run(replying(data), scenario)


# ---- failures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_connection_refused(kind: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused

    async def main() -> HttpError:
        client = make_client(kind)
        try:
            with pytest.raises(HttpError) as info:
                await client.request("GET", f"http://127.0.0.1:{port}/", timeout=5)
        finally:
            await client.aclose()
        return info.value
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        error = runner.run(main())
    assert error.kind == "connection" and error.before_answer is True


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("how", ["reset", "close"])
def test_connection_lost_mid_answer(kind: str, how: str) -> None:
    async def handler(ex: Exchange) -> bool:
        await ex.send(answer(200, b"", length=False, headers={"Content-Length": "100"}) + b'{"partial')
        await asyncio.sleep(0.05)
        ex.reset() if how == "reset" else await ex.close()
        return False
    async def scenario(server: RawServer) -> None:
        error = await failure(kind, server)
        assert error.kind == "connection"
    run(handler, scenario)


@pytest.mark.parametrize("kind", ["lean"])
def test_reset_of_a_close_delimited_body_is_not_an_answer(kind: str) -> None:
    """Only a clean close ends a close-delimited body. (aiohttp takes the bytes before a reset as
    the whole answer, which is why this case is not parametrized over both clients.)"""
    async def handler(ex: Exchange) -> bool:
        await ex.send(answer(200, b"", length=False, headers={"Connection": "close"}) + b'{"partial')
        await asyncio.sleep(0.05)
        ex.reset()
        return False
    async def scenario(server: RawServer) -> None:
        assert (await failure(kind, server)).kind == "connection"
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_timeout_without_an_answer(kind: str) -> None:
    async def handler(ex: Exchange) -> bool:
        await ex.wait_for_client_close()
        return False
    async def scenario(server: RawServer) -> None:
        error = await failure(kind, server, timeout=0.3)
        assert error.kind == "timeout"
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_malformed_answer_is_a_protocol_error(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        assert (await failure(kind, server)).kind == "protocol"
    run(replying(b"SPDY/9 banana\r\n\r\n", keep=False), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("shape", ["content-length", "chunked", "close-delimited", "gzip"])
def test_answer_over_the_cap(kind: str, shape: str) -> None:
    big = b'{"x": "' + b"y" * 5000 + b'"}'
    data = {
        "content-length": answer(200, big),
        "chunked": chunked(200, [big[i:i + 500] for i in range(0, len(big), 500)]),
        "close-delimited": answer(200, big, headers={"Connection": "close"}, length=False),
        "gzip": answer(200, gzip.compress(big), headers={"Content-Encoding": "gzip"}),
    }[shape]
    async def scenario(server: RawServer) -> None:
        error = await failure(kind, server, max_body=1000)
        assert error.kind == "too_large" and "1,000-byte cap" in str(error)
        assert "CORRAL_MAX_ANSWER_BYTES" in str(error)
    run(replying(data, keep=shape != "close-delimited"), scenario)


# ---- connections ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_keep_alive_reuse(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        for method in ("POST", "GET", "POST"):
            got = await client.request(method, server.url + "/api/chat", headers=JSON,
                                       body=b"{}" if method == "POST" else None, timeout=5)
            assert got.status == 200
        await client.aclose()
        assert server.accepted == 1 and len(server.received) == 3
    run(replying(chunked(200, [b'{"a": ', b"1}"])), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_idle_connection_closed_by_the_server_is_not_reused(kind: str) -> None:
    """Keep-alive promised, then the idle connection is closed anyway: the next request goes out on
    a fresh connection, once, and succeeds."""
    async def handler(ex: Exchange) -> bool:
        await ex.send(answer(200, b"{}", headers={"Connection": "keep-alive"}))
        await ex.close()
        return False
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        for _ in range(3):
            got = await client.request("POST", server.url + "/", headers=JSON, body=b"{}", timeout=5)
            assert got.status == 200 and got.body == b"{}"
            await asyncio.sleep(0.05)
        await client.aclose()
        assert server.count("POST") == 3 and server.accepted == 3
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_connections_that_timed_out_are_closed_and_leave_the_pool(kind: str) -> None:
    async def handler(ex: Exchange) -> bool:
        if ex.request.path == "/slow":
            await ex.wait_for_client_close()
            return False
        await ex.send(answer(200, b"{}"))
        return True
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        for _ in range(5):
            with pytest.raises(HttpError) as info:
                await client.request("POST", server.url + "/slow", headers=JSON, body=b"{}", timeout=0.2)
            assert info.value.kind == "timeout"
        got = await client.request("GET", server.url + "/fast", timeout=5)
        assert got.status == 200
        for _ in range(50):  # let the server see the closes
            if server.closed_by_client >= 5:
                break
            await asyncio.sleep(0.01)
        assert server.accepted == 6 and server.closed_by_client == 5 and server.open_connections == 1
        if isinstance(client, LeanClient):
            assert client.pool_size() == 1
        await client.aclose()
    run(handler, scenario)


def test_lean_pool_forgets_connections_reset_or_closed_by_the_server() -> None:
    async def handler(ex: Exchange) -> bool:
        if ex.request.path == "/reset":
            ex.reset()
            return False
        await ex.send(answer(200, b"{}"))
        return ex.request.path != "/close"
    async def scenario(server: RawServer) -> None:
        client = LeanClient()
        for _ in range(5):
            with pytest.raises(HttpError):
                await client.request("POST", server.url + "/reset", headers=JSON, body=b"{}", timeout=5)
        assert client.pool_size() == 0
        await client.request("GET", server.url + "/close", timeout=5)  # answered, then closed
        for _ in range(50):
            if client.pool_size() == 0:
                break
            await asyncio.sleep(0.01)
        assert client.pool_size() == 0 and client.connections_opened == 6
        await client.aclose()
    run(handler, scenario)


def _closes_the_second_request_unanswered() -> Callable[[Exchange], Awaitable[bool]]:
    """Answers the first request of a connection; reads the second whole, then closes without a
    byte of answer (a server that may well have run it)."""
    async def handler(ex: Exchange) -> bool:
        first_on_connection = sum(1 for r in ex.server.received if r.connection == ex.request.connection) == 1
        if first_on_connection:
            await ex.send(answer(200, b'{"n": 1}'))
            return True
        await ex.close()
        return False
    return handler


@pytest.mark.parametrize("kind", CLIENTS)
def test_post_is_not_sent_twice(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        await client.request("POST", server.url + "/api/chat", headers=JSON, body=b"{}", timeout=5)
        with pytest.raises(HttpError) as info:
            await client.request("POST", server.url + "/api/chat", headers=JSON, body=b"{}", timeout=5)
        await client.aclose()
        assert info.value.kind == "connection"
        assert server.count("POST") == 2  # the second copy reached the server exactly once
    run(_closes_the_second_request_unanswered(), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_get_on_a_connection_closed_unanswered_is_sent_again_once(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        await client.request("GET", server.url + "/api/tags", timeout=5)
        got = await client.request("GET", server.url + "/api/tags", timeout=5)
        await client.aclose()
        assert got.status == 200 and server.count("GET") == 3 and server.accepted == 2
    run(_closes_the_second_request_unanswered(), scenario)


# ---- streams --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_streamed_lines(kind: str) -> None:
    pieces = [b'{"a": 1}\n{"b":', b' 2}\r\n', b"\n", b'{"c": 3}\n{"d": 4}']
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        for _ in range(2):
            async with client.stream("POST", server.url + "/api/chat", headers=JSON, body=b"{}",
                                     timeout=5) as answer_:
                assert answer_.status == 200 and answer_.headers.get("x-kind") == "ndjson"
                lines = [line async for line in answer_.lines()]
            assert lines == [b'{"a": 1}', b'{"b": 2}', b"", b'{"c": 3}', b'{"d": 4}']
        await client.aclose()
        assert server.accepted == 1  # read to the end: the connection is reused
    run(replying(chunked(200, pieces, headers={"X-Kind": "ndjson"})), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_streamed_error_answer_and_timeout(kind: str) -> None:
    async def handler(ex: Exchange) -> bool:
        if ex.request.path == "/busy":
            await ex.send(answer(503, b'{"error": "busy"}', headers={"Retry-After": "2"}))
            return True
        await ex.send(chunked(200, [b'{"a": 1}\n'])[:-5])  # the first line, then nothing more
        await ex.wait_for_client_close()
        return False
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        async with client.stream("POST", server.url + "/busy", body=b"{}", timeout=5) as busy:
            assert busy.status == 503 and busy.headers.get("retry-after") == "2"
            assert await busy.read() == b'{"error": "busy"}'
        seen = []
        with pytest.raises(HttpError) as info:
            async with client.stream("POST", server.url + "/hang", body=b"{}", timeout=0.3) as slow:
                async for line in slow.lines():
                    seen.append(line)
        assert info.value.kind == "timeout" and seen == [b'{"a": 1}']
        await client.aclose()
    run(handler, scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_streamed_answer_over_the_cap(kind: str) -> None:
    pieces = [b'{"t": "' + b"x" * 300 + b'"}\n'] * 10
    async def scenario(server: RawServer) -> None:
        client = make_client(kind, max_body=1000)
        with pytest.raises(HttpError) as info:
            async with client.stream("POST", server.url + "/", body=b"{}", timeout=5) as answer_:
                async for _ in answer_.lines():
                    pass
        await client.aclose()
        assert info.value.kind == "too_large"
    run(replying(chunked(200, pieces)), scenario)


# ---- the factory and the backends on top ----------------------------------------------------------

def test_default_client_routes_plain_http_to_the_lean_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_HTTP", raising=False)
    monkeypatch.delenv("CORRAL_MAX_ANSWER_BYTES", raising=False)
    client = default_client()
    assert isinstance(client, RoutingClient) and client.max_body == DEFAULT_MAX_BODY == 64 * 2**20
    assert isinstance(client.client_for("http://127.0.0.1:1/api/chat"), LeanClient)
    assert isinstance(client.client_for("https://example.invalid/v1/models"), AioClient)
    assert isinstance(client.client_for("http://user:pw@127.0.0.1:1/"), AioClient)
    monkeypatch.setenv("CORRAL_HTTP", "aiohttp")
    monkeypatch.setenv("CORRAL_MAX_ANSWER_BYTES", "1234")
    forced = default_client()
    assert isinstance(forced, RoutingClient) and forced.max_body == 1234
    assert isinstance(forced.client_for("http://127.0.0.1:1/api/chat"), AioClient)


def _ollama_server(chat: bytes) -> Callable[[Exchange], Awaitable[bool]]:
    async def handler(ex: Exchange) -> bool:
        if ex.request.path == "/api/chat":
            await ex.send(chat)
        else:
            await ex.send(answer(200, b'{"version": "0.9.0", "models": [{"name": "m:latest"}]}'))
        return True
    return handler


def _chat(index: int = 0) -> Request:
    return Request(index=index, id=str(index), model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("status", [301, 307])
def test_backend_fails_a_redirected_row_naming_status_and_location(kind: str, status: int) -> None:
    chat = answer(status, b'{"message": {"content": "not the answer"}, "done": true}',
                  headers={"Location": "http://elsewhere.invalid:11434/api/chat"})
    async def scenario(server: RawServer) -> None:
        client = make_client(kind)
        backend = make_backend(ServerSpec(server.url, api="ollama"), client)
        with pytest.raises(BackendError) as info:
            await backend.send(_chat(), 5)
        await client.aclose()
        message = str(info.value)
        assert f"HTTP {status}" in message and "http://elsewhere.invalid:11434/api/chat" in message
        assert info.value.status == status and not info.value.retryable
    run(_ollama_server(chat), scenario)


@pytest.mark.parametrize("kind", CLIENTS)
def test_backend_maps_http_errors_and_statuses(kind: str) -> None:
    async def scenario(server: RawServer) -> None:
        client = make_client(kind, max_body=100)
        backend = make_backend(ServerSpec(server.url, api="ollama"), client)
        with pytest.raises(BackendError) as busy:
            await backend.send(_chat(), 5)
        with pytest.raises(BackendError) as big:
            await backend.send(_chat(), 5)
        await client.aclose()
        assert (busy.value.status, busy.value.retryable, busy.value.retry_after) == (503, True, 3.0)
        assert big.value.kind == "protocol" and not big.value.retryable and "100-byte cap" in str(big.value)
    calls = 0
    async def handler(ex: Exchange) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await ex.send(answer(503, b'{"error": "busy"}', headers={"Retry-After": "3"}))
        else:
            await ex.send(answer(200, b'{"message": {"content": "' + b"z" * 500 + b'"}}'))
        return True
    run(handler, scenario)


def test_end_to_end_row_through_a_redirect_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the public front: the row is a failure naming the status, never `success: true`."""
    import threading

    import corral

    ready = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            chat = answer(302, b'{"message": {"content": "x"}, "done": true}',
                          headers={"Location": "http://moved.invalid/api/chat"})
            async with RawServer(_ollama_server(chat)) as server:
                holder["url"] = server.url
                holder["loop"] = asyncio.get_running_loop()
                holder["stop"] = stop = asyncio.Event()
                ready.set()
                await stop.wait()
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        (row,) = corral.batch_generate(["hi"], model="m", servers=[holder["url"]], max_attempts=1)
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
    assert not row["success"] and "HTTP 302" in row["error"] and "http://moved.invalid/api/chat" in row["error"]


def test_engine_sends_through_a_given_client_and_leaves_it_open() -> None:
    from corral.engine import Engine

    async def scenario(server: RawServer) -> None:
        client = LeanClient()
        async with Engine([ServerSpec(server.url, api="ollama")], http=client) as engine:
            assert len(engine.servers) == 1
        assert client.connections_opened == 1 and client.pool_size() == 1  # not closed by the engine
        got = await client.request("GET", server.url + "/api/version", timeout=5)
        assert got.status == 200 and server.accepted == 1
        await client.aclose()
        assert client.pool_size() == 0
    run(_ollama_server(answer(200, b"{}")), scenario)
