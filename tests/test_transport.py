"""The lean HTTP transport: bodies, keep-alive reuse, servers closing idle connections, errors."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from corral.transport import HttpTransport, TransportError


def _headers(port: int) -> bytes:
    return f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n".encode()


def test_content_length_and_chunked_bodies_and_reuse(fake_ollama) -> None:
    async def main() -> None:
        transport = HttpTransport()
        body = orjson.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                             "stream": False})
        first = await transport.request("127.0.0.1", fake_ollama.port, "POST", "/api/chat",
                                        _headers(fake_ollama.port), body, 5)
        assert first.status == 200 and orjson.loads(first.body)["message"]["content"] == "echo: hi"
        streamed = await transport.request("127.0.0.1", fake_ollama.port, "POST", "/api/chat",
                                           _headers(fake_ollama.port), body.replace(b"false", b"true"), 5)
        lines = [orjson.loads(line) for line in streamed.body.splitlines()]  # chunked NDJSON, whole
        assert len(lines) > 1 and lines[-1]["done"] is True
        missing = await transport.request("127.0.0.1", fake_ollama.port, "GET", "/nope",
                                          _headers(fake_ollama.port), None, 5)
        assert missing.status == 404
        assert len(transport._all) == 1  # one keep-alive connection served all three
        transport.close()

    asyncio.run(main())


def test_server_closing_an_idle_connection_is_retried_on_a_fresh_one() -> None:
    async def main() -> None:
        served = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}")
            await writer.drain()
            writer.close()  # keep-alive promised, then the idle connection is closed anyway

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = HttpTransport()
        for _ in range(3):
            answer = await transport.request("127.0.0.1", port, "GET", "/", _headers(port), None, 5)
            assert answer.status == 200 and answer.body == b"{}"
            await asyncio.sleep(0.05)
        assert served == 3
        transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_refused_timeout_and_dropped_answers_are_classified(fake_ollama) -> None:
    async def main() -> None:
        transport = HttpTransport()
        with pytest.raises(TransportError) as refused:
            await transport.request("127.0.0.1", 9, "GET", "/", _headers(9), None, 2)
        assert refused.value.kind == "connection"
        fake_ollama.hang = True
        body = orjson.dumps({"model": "llama3.2", "prompt": "x", "stream": False})
        with pytest.raises(TransportError) as slow:
            await transport.request("127.0.0.1", fake_ollama.port, "POST", "/api/generate",
                                    _headers(fake_ollama.port), body, 0.3)
        assert slow.value.kind == "timeout"
        fake_ollama.hang = False
        fake_ollama.drop_rate = 1.0
        with pytest.raises(TransportError) as dropped:
            await transport.request("127.0.0.1", fake_ollama.port, "POST", "/api/generate",
                                    _headers(fake_ollama.port), body, 5)
        assert dropped.value.kind in ("connection", "protocol")
        transport.close()

    asyncio.run(main())
