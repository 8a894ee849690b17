"""Cluster TOML files: written by ``corral serve``, joined by ``corral cluster merge``.

Why files rather than a live registry: each machine runs ``corral serve`` on its own and writes what
it started; copying those small files to the machine that drives the run and merging them is all a
cluster of seven 4-GPU machines needs, and the result is a plain config a person can read and edit.

Both shapes that :func:`corral.config.load_config` reads are written: ollama-batch-cluster's
``[ollama_instances]`` (``"host:port" = gpu``, Ollama only) and the richer ``[[servers]]``.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import Config, ServerSpec, load_config
from .errors import UsageError

FORMS = ("servers", "instances")


def _str(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def advertised_host(bind_host: str) -> str:
    """The host other machines should use: this machine's name for a wildcard bind, else the bind."""
    if bind_host in ("0.0.0.0", "::", ""):
        return socket.getfqdn() or socket.gethostname()
    return bind_host


def render(servers: Iterable[ServerSpec], *, model: str | None = None,
           system_message: str | None = None, options: dict[str, Any] | None = None,
           form: str = "servers", header: str = "") -> str:
    """The TOML text for ``servers``; ``form="instances"`` is ollama-batch-cluster's table (Ollama
    servers only)."""
    servers = list(servers)
    if form not in FORMS:
        raise UsageError(f"unknown cluster form {form!r}: use one of {', '.join(FORMS)}")
    lines = [f"# {line}" for line in header.splitlines()]
    if model:
        lines.append(f"model = {_str(model)}")
    if system_message:
        lines.append(f"system_message = {_str(system_message)}")
    if options:
        lines.append("")
        lines.append("[options]")
        lines += [f"{_str(k)} = {json.dumps(v)}" for k, v in options.items()]
    if form == "instances":
        if any(s.api != "ollama" for s in servers):
            raise UsageError("the [ollama_instances] form holds Ollama servers only; use the servers form")
        lines += ["", "[ollama_instances]", '# "host:port" = GPU index']
        for s in servers:
            hostport = s.url.split("://", 1)[1]
            lines.append(f"{_str(hostport)} = {s.gpu if s.gpu is not None else 0}")
        return "\n".join(lines).lstrip("\n") + "\n"
    for s in servers:
        lines += ["", "[[servers]]", f"url = {_str(s.url)}", f"api = {_str(s.api)}"]
        if s.gpu is not None:
            lines.append(f"gpu = {s.gpu}")
        if s.name:
            lines.append(f"name = {_str(s.name)}")
        if s.models:
            lines.append("models = [" + ", ".join(_str(m) for m in s.models) + "]")
        if s.max_concurrency:
            lines.append(f"max_concurrency = {s.max_concurrency}")
        if s.api_key_env:
            lines.append(f"api_key_env = {_str(s.api_key_env)}")
        if s.timeout:
            lines.append(f"timeout = {s.timeout}")
        for key in ("price_in", "price_out", "rpm", "tpm", "queue_ahead"):
            if getattr(s, key) is not None:
                lines.append(f"{key} = {getattr(s, key)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def write(path: str | Path, text: str) -> None:
    """Written whole (corral.sinks.output); the output may be one of the merged files: they are read
    before anything is written."""
    from .sinks.output import write_whole

    try:
        write_whole(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def merge(paths: list[str]) -> tuple[Config, list[str]]:
    """All servers of ``paths`` in one config, and warnings (a server listed twice, models that differ).

    Settings (model, system message, options) come from the first file that sets them.
    """
    if not paths:
        raise UsageError("corral cluster merge a.toml b.toml ... -o all.toml")
    merged = Config()
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        config = load_config(path)
        for spec in config.servers:
            if spec.url in seen:
                warnings.append(f"{spec.url} is in {seen[spec.url]} and {path}; kept once")
                continue
            seen[spec.url] = path
            merged.servers.append(spec)
        for key in ("model", "system_message"):
            value, have = getattr(config, key), getattr(merged, key)
            if value is not None and have is None:
                setattr(merged, key, value)
            elif value is not None and value != have:
                warnings.append(f"{path}: {key} {value!r} differs from {have!r}; kept {have!r}")
        for key, value in config.options.items():
            merged.options.setdefault(key, value)
    if not merged.servers:
        raise UsageError(f"no servers in {', '.join(paths)}")
    return merged, warnings


def warn(messages: list[str]) -> None:
    for message in messages:
        print(f"corral: warning: {message}", file=sys.stderr)
