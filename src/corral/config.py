"""Servers and job settings from flags, the environment and TOML files.

Two TOML shapes are read. ollama-batch-cluster's file, as users already have it::

    model = "llama3.2"
    system_message = "..."
    [ollama_instances]
    "server1:11432" = 0          # "host:port" = GPU index

and the richer form with one table per server::

    model = "llama3.2"
    [[servers]]
    url = "http://gpu1:11434"
    api = "ollama"               # or "openai"
    models = ["llama3.2"]        # optional; probed when absent
    max_concurrency = 4          # this server's slots
    rpm = 500                    # optional: requests per minute, at most (a hosted endpoint)
    tpm = 200000                 # optional: tokens per minute, at most
    queue_ahead = 1              # requests waiting in its queue beyond its slots (0: none)

Unknown keys are an error with a did-you-mean: a typo such as ``max_concurency`` would otherwise
silently fall back to a default and leave GPUs idle for hours. So is an unknown name in ``options``
(``options = { temprature = 0 }`` would be sent, ignored by the server and written into the
manifest); ``extra_options = { ... }`` sends options corral does not know, on purpose.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .limits import per_minute_problem, seconds_problem, slots_problem
from .options import KNOWN_OPTIONS, suggestion
from .secrets import redact_url

APIS = ("ollama", "openai")
_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|[0-9A-Fa-f:.]+)$")
DEFAULT_OLLAMA_PORT = 11434

_TOP_KEYS = {
    "model", "system_message", "ollama_instances", "servers", "options", "timeout",
    "max_attempts", "api", "max_concurrency", "format", "keep_alive", "hedge", "max_busy_seconds",
    "extra_options",
}
_SERVER_KEYS = {
    "url", "api", "models", "max_concurrency", "api_key_env", "gpu", "name", "timeout",
    "price_in", "price_out", "rpm", "tpm", "queue_ahead",
}
#: The key an OpenAI-compatible server with no ``api_key_env`` of its own is sent, as the OpenAI SDK does.
OPENAI_KEY_ENV = "OPENAI_API_KEY"
_OPTION_KEYS_HINT = "temperature, seed, num_ctx, num_predict, top_p, top_k, stop, ..."


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server as the user described it, before any probing."""

    url: str
    api: str = "ollama"
    models: tuple[str, ...] | None = None
    max_concurrency: int | None = None
    api_key_env: str | None = None
    gpu: int | None = None
    name: str | None = None
    timeout: float | None = None
    price_in: float | None = None      # per million prompt tokens, for the cost in summaries
    price_out: float | None = None     # per million completion tokens
    rpm: int | None = None             # requests started per minute, at most (a hosted endpoint's limit)
    tpm: int | None = None             # tokens (prompt + completion) per minute, at most
    queue_ahead: int | None = None     # requests sent beyond its slots, to wait in its queue (None: 1)

    @property
    def label(self) -> str:
        """A short name for tables and logs: host:port unless the user named it."""
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return parts.netloc or self.url

    def api_key(self) -> str | None:
        """Read the key from the environment at use time, so it is never stored or logged: the
        server's ``api_key_env``, else ``OPENAI_API_KEY`` for an OpenAI-compatible server."""
        name = self.api_key_env or (OPENAI_KEY_ENV if self.api == "openai" else None)
        return os.environ.get(name) or None if name else None


@dataclass(slots=True)
class Config:
    """Everything a config file may set; flags override field by field."""

    servers: list[ServerSpec] = field(default_factory=list)
    model: str | None = None
    system_message: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: Options sent as they are, unchecked: those a server accepts that corral does not know.
    extra_options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    keep_alive: str | int | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    hedge: bool | None = None    # re-send a straggler to an idle faster server at a job's end
    max_busy_seconds: float | None = None  # a row's time on "server busy" answers before it fails
    path: str | None = None


def normalize_url(raw: str, api: str = "ollama") -> str:
    """Accept "host:port", "host", or a full URL; return "scheme://host:port" without a trailing slash.

    Ollama's own OLLAMA_HOST accepts the bare forms, so we do too.
    """
    text = raw.strip()
    if not text:
        raise ConfigError("empty server URL")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad server URL {redact_url(raw)!r}: expected http://host:port", near=raw)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad server URL {redact_url(raw)!r}: the port is not a number", near=raw) from None
    if port == 0:  # urlsplit reads "host:0" as no port at all, which would mean port 80
        raise ConfigError(f"bad server URL {redact_url(raw)!r}: port 0 is not a port a server listens on "
                          f"(give 1-65535)", near=raw)
    if port is None and api == "ollama" and parts.scheme == "http":
        port = DEFAULT_OLLAMA_PORT
    host = parts.hostname
    if not _HOST.match(host):
        raise ConfigError(f"bad server URL {redact_url(raw)!r}: {host!r} is not a host name or address", near=raw)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    path = parts.path.rstrip("/")
    if api == "openai" and path.endswith("/v1"):
        path = path[: -len("/v1")]  # we add /v1 ourselves; accept both spellings
    return f"{parts.scheme}://{netloc}{path}"


def server_from_url(url: str, api: str = "ollama", **extra: Any) -> ServerSpec:
    if api not in APIS:
        raise ConfigError(f"unknown api {api!r} for {redact_url(url)}: use one of {', '.join(APIS)}", near=api)
    return ServerSpec(url=normalize_url(url, api), api=api, **extra)


def default_servers() -> list[ServerSpec]:
    """OLLAMA_HOST if set, else the local Ollama default."""
    host = os.environ.get("OLLAMA_HOST") or f"127.0.0.1:{DEFAULT_OLLAMA_PORT}"
    return [server_from_url(host, "ollama")]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML config; any problem is a ConfigError naming the file (and the line when known)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8").removeprefix("\ufeff")  # a BOM, as Windows editors write
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_AT.search(message)
        if where:
            message = message[:where.start()].rstrip() + f" (column {where.group(2)})"
            raise ConfigError(f"{p}:{where.group(1)}: invalid TOML: {message}") from None
        raise ConfigError(f"{p}: invalid TOML: {message}") from None
    try:
        return parse_config(data, str(p))
    except ConfigError as exc:
        line = _line_of(text, exc.near) if exc.near else None
        if line is None or not str(exc).startswith(f"{p}: "):
            raise
        raise ConfigError(f"{p}:{line}: {str(exc)[len(str(p)) + 2:]}", near=exc.near) from None


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def _line_of(text: str, near: str) -> int | None:
    """The line of ``near`` in the file: where it is set as a key, else where it first appears."""
    key = re.compile(rf'^\s*["\']?{re.escape(near)}["\']?\s*=', re.MULTILINE)
    found = key.search(text)
    at = found.start() if found else text.find(near)
    if at < 0:
        return None
    if found:
        at += len(found.group(0)) - len(found.group(0).lstrip())
    return text.count("\n", 0, at) + 1


def parse_config(data: dict[str, Any], where: str = "<config>") -> Config:
    _refuse_unknown(data, _TOP_KEYS, where)
    default_api = _expect(data.get("api", "ollama"), str, where, "api")
    if default_api not in APIS:
        raise ConfigError(f"{where}: api must be one of {', '.join(APIS)}, not {default_api!r}",
                          near="api")
    default_slots = data.get("max_concurrency")
    if default_slots is not None:
        default_slots = _slots(default_slots, where, "max_concurrency")

    servers: list[ServerSpec] = []
    instances = data.get("ollama_instances", {})
    if not isinstance(instances, dict):
        raise ConfigError(f"{where}: [ollama_instances] must be a table of \"host:port\" = gpu")
    for hostport, gpu in instances.items():
        if not isinstance(gpu, int):
            raise ConfigError(f"{where}: ollama_instances.{hostport} must be a GPU index (integer)",
                              near=hostport)
        try:
            servers.append(server_from_url(hostport, "ollama", gpu=gpu, max_concurrency=default_slots))
        except ConfigError as exc:
            raise ConfigError(f"{where}: ollama_instances: {exc}", near=exc.near) from None

    raw_servers = data.get("servers", [])
    if not isinstance(raw_servers, list):
        raise ConfigError(f"{where}: servers must be an array of tables: [[servers]]")
    for i, entry in enumerate(raw_servers, 1):
        servers.append(_parse_server(entry, f"{where}: servers[{i}]", default_api, default_slots))

    seen: set[str] = set()
    for spec in servers:
        if spec.url in seen:
            raise ConfigError(f"{where}: server {spec.url} is listed twice")
        seen.add(spec.url)

    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: options must be a table ({_OPTION_KEYS_HINT})", near="options")
    for name in options:
        if name not in KNOWN_OPTIONS:
            raise ConfigError(f"{where}: options: unknown model option {name!r}"
                              f"{suggestion(name, KNOWN_OPTIONS)} (to send an option corral does not "
                              f"know, put it in extra_options = {{ {name} = ... }})", near=name)
    extra = data.get("extra_options", {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{where}: extra_options must be a table of options sent as they are",
                          near="extra_options")
    timeout = data.get("timeout")
    if timeout is not None:
        timeout = _seconds(timeout, where, "timeout")
    busy = data.get("max_busy_seconds")
    if busy is not None:
        busy = _seconds(busy, where, "max_busy_seconds")
    attempts = data.get("max_attempts")
    if attempts is not None:
        attempts = _positive_int(attempts, where, "max_attempts")
    hedge = data.get("hedge")
    if hedge is not None and not isinstance(hedge, bool):
        raise ConfigError(f"{where}: hedge must be true or false, not {hedge!r}", near="hedge")
    return Config(
        servers=servers,
        model=_opt_str(data.get("model"), where, "model"),
        system_message=_opt_str(data.get("system_message"), where, "system_message"),
        options=dict(options),
        extra_options=dict(extra),
        format=data.get("format"),
        keep_alive=data.get("keep_alive"),
        timeout=timeout,
        max_attempts=attempts,
        hedge=hedge,
        max_busy_seconds=busy,
        path=where,
    )


def _parse_server(entry: Any, where: str, default_api: str, default_slots: int | None) -> ServerSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table with at least url = \"http://host:port\"")
    _refuse_unknown(entry, _SERVER_KEYS, where)
    if "url" not in entry:
        raise ConfigError(f"{where}: missing url")
    api = _expect(entry.get("api", default_api), str, where, "api")
    models = entry.get("models")
    if models is not None:
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"{where}: models must be a list of model names", near="models")
        models = tuple(models)
    slots = entry.get("max_concurrency", default_slots)
    if slots is not None:
        slots = _slots(slots, where, "max_concurrency")
    timeout = entry.get("timeout")
    if timeout is not None:
        timeout = _seconds(timeout, where, "timeout")
    prices = {key: _price(entry.get(key), where, key) for key in ("price_in", "price_out")}
    rates = {key: _per_minute(entry.get(key), where, key) for key in ("rpm", "tpm")}
    ahead = entry.get("queue_ahead")
    if ahead is not None and (isinstance(ahead, bool) or not isinstance(ahead, int) or not 0 <= ahead <= 64):
        raise ConfigError(f"{where}: queue_ahead must be a whole number from 0 to 64 (requests waiting "
                          f"in the server's own queue; 0 for a server that refuses instead of queueing), "
                          f"not {ahead!r}", near="queue_ahead")
    gpu = entry.get("gpu")
    if gpu is not None and not isinstance(gpu, int):
        raise ConfigError(f"{where}: gpu must be an integer", near="gpu")
    try:
        return server_from_url(
            _expect(entry["url"], str, where, "url"), api,
            models=models, max_concurrency=slots,
            api_key_env=_opt_str(entry.get("api_key_env"), where, "api_key_env"),
            gpu=gpu, name=_opt_str(entry.get("name"), where, "name"), timeout=timeout, **prices, **rates,
            queue_ahead=ahead,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", near=exc.near) from None


def _refuse_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    """A ConfigError for the first unknown key, with the closest allowed one and all of them."""
    unknown = sorted(set(table) - allowed)
    if unknown:
        hint = suggestion(unknown[0], allowed)
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}{hint or ';'} "
                          f"allowed: {', '.join(sorted(allowed))}", near=unknown[0])


def _expect(value: Any, kind: type, where: str, key: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__}, not {value!r}", near=key)
    return value


def _opt_str(value: Any, where: str, key: str) -> str | None:
    return None if value is None else _expect(value, str, where, key)


def _positive_int(value: Any, where: str, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, not {value!r}", near=key)
    return value


def _slots(value: Any, where: str, key: str) -> int:
    problem = slots_problem(value)
    if problem:
        raise ConfigError(f"{where}: {key} {problem}", near=key)
    return int(value)


def _seconds(value: Any, where: str, key: str) -> float:
    problem = seconds_problem(value)
    if problem:
        raise ConfigError(f"{where}: {key} {problem}", near=key)
    return float(value)


def _price(value: Any, where: str, key: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}: {key} must be a price per million tokens (a number >= 0), "
                          f"not {value!r}", near=key)
    return float(value)


def _per_minute(value: Any, where: str, key: str) -> int | None:
    if value is None:
        return None
    problem = per_minute_problem(value)
    if problem:
        raise ConfigError(f"{where}: {key} {problem}", near=key)
    return value


def with_overrides(spec: ServerSpec, **changes: Any) -> ServerSpec:
    return replace(spec, **{k: v for k, v in changes.items() if v is not None})
