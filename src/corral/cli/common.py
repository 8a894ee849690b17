"""Flag handling shared by every command that talks to servers: config, --server, --local, options."""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from ..config import Config, ServerSpec, default_servers, load_config, server_from_url
from ..errors import UsageError


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="corral: %(message)s", stream=sys.stderr)
    logging.getLogger("corral").setLevel(level)


def parse_option_pairs(pairs: list[str]) -> dict[str, Any]:
    """``-O temperature=0 -O stop='["\\n"]'``: values are JSON when they parse, else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--option {pair!r}: expected NAME=VALUE, e.g. -O temperature=0")
        name, raw = pair.split("=", 1)
        try:
            options[name.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            options[name.strip()] = raw
    return options


def read_text_arg(value: str | None, flag: str) -> str | None:
    """``@file.txt`` reads the text from a file, as curl does."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag} {value}: cannot read {path}: {exc.strerror or exc}") from None


def load_schema(value: str | None) -> Any:
    """--schema: a JSON Schema inline or from a file (``@schema.json`` or a path)."""
    if value is None:
        return None
    text = value
    if value.startswith("@") or Path(value).is_file():
        path = Path(value.lstrip("@"))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--schema: cannot read {path}: {exc.strerror or exc}") from None
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--schema: not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError("--schema must be a JSON object (a JSON Schema)")
    return schema


def resolve_servers(config: Config, server_urls: list[str], api: str, local: bool,
                    local_parallel: int, stack: ExitStack) -> tuple[list[ServerSpec], str | None]:
    """The servers for this run, and the model the local server answers to (when --local).

    Precedence: --local, then --server flags, then the config's servers, then OLLAMA_HOST.
    """
    if local:
        spec = start_local(local_parallel, stack)
        return [spec], (spec.models or ("",))[0]
    if server_urls:
        return [server_from_url(url, api) for url in server_urls], None
    if config.servers:
        return list(config.servers), None
    return default_servers(), None


def start_local(n_parallel: int, stack: ExitStack, *, embedding: bool = False) -> ServerSpec:
    """Start the embedded llama.cpp server for this command; it stops when ``stack`` closes."""
    from ..local import LocalServer

    print("corral: starting the embedded llama.cpp server (SmolLM2-135M)...", file=sys.stderr)
    server = stack.enter_context(LocalServer(n_parallel=n_parallel, embedding=embedding))
    # No max_concurrency: the engine reads the slots from llama.cpp's /props and keeps twice as many
    # requests in flight, the best setting measured on this server.
    return ServerSpec(url=server.url, api="openai", models=(server.model,), name="local")


def load_config_arg(path: str | None) -> Config:
    return load_config(path) if path else Config()
