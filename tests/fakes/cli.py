"""Fake servers in the foreground of their own process: ``python -m tests.fakes``.

Tests that must SIGKILL a server like a real one (``tests/scenarios.py``'s ``ServerProcess``,
``tests/test_serve.py``, ``tests/test_fakes.py``) and benchmarks run it this way. It prints
``READY <url>`` per server once listening and stops on SIGTERM/SIGINT::

    python -m tests.fakes --api ollama --port 0 --latency 0.01 --slots 4
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from .fake_server import FakeServer

__all__ = ["run_fake_servers_cli"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.fakes",
                                description="Run fake Ollama/OpenAI servers until SIGTERM. Prints "
                                            "'READY <url>' per server once listening.")
    p.add_argument("--api", choices=("ollama", "openai"), default="ollama")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    p.add_argument("--count", type=int, default=1,
                   help="servers to run; with --port N they use N, N+1, ...")
    p.add_argument("--models", action="append", default=None,
                   help="model name(s); repeat or comma-separate (default llama3.2)")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--max-queue", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--version", default="0.6.2")
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--llamacpp", action="store_true", help="serve llama.cpp's /props")
    p.add_argument("--no-strict-models", action="store_true", help="accept any model name")
    p.add_argument("--max-context-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--retry-after", type=float, default=None)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--slow-body", type=float, default=0.0)
    p.add_argument("--slow-rate", type=float, default=1.0)
    p.add_argument("--fail-message", default=None)
    p.add_argument("--endless-whitespace", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--record", default=None,
                   help="append 'path<TAB>prompt' per inference request to this file")
    return p


def run_fake_servers_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.fakes``: serve until SIGTERM/SIGINT, exit 0."""
    args = _parser().parse_args(argv)
    models: list[str] = []
    for item in args.models or ["llama3.2"]:
        models.extend(m.strip() for m in item.split(",") if m.strip())
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers: list[FakeServer] = []
    try:
        for i in range(max(1, args.count)):
            server = FakeServer(
                api=args.api, models=models, latency=args.latency, slots=args.slots,
                max_queue=args.max_queue, port=args.port + i if args.port else 0,
                api_key=args.api_key, version=args.version, embedding_dim=args.embedding_dim,
                llamacpp=args.llamacpp, strict_models=not args.no_strict_models,
                max_context_tokens=args.max_context_tokens, seed=args.seed + i,
            )
            server.fail_rate, server.fail_status = args.fail_rate, args.fail_status
            server.retry_after, server.drop_rate = args.retry_after, args.drop_rate
            server.slow_body, server.hang = args.slow_body, args.hang
            server.slow_rate, server.fail_message = args.slow_rate, args.fail_message
            server.endless_whitespace, server.record_path = args.endless_whitespace, args.record
            servers.append(server.start())
            print(f"READY {server.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for server in servers:
            server.stop()
    return 0
