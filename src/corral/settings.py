"""One resolution of settings: flags or keyword arguments, the config file and the environment.

Every front (the CLI, the Python API, Ray) hands what the user said to `resolve` and gets one typed
`Settings` back: the servers to use and the job's defaults. The precedence is the same everywhere:
an explicit flag or keyword argument, then the config file, then the environment (``OLLAMA_HOST``),
then corral's built-in default. Options merge key by key, the explicit ones winning.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Config, ServerSpec, default_servers, load_config, parse_config, server_from_url
from .errors import UsageError
from .limits import per_minute_problem, seconds_problem, slots_problem
from .options import check_options

#: What a front accepts as servers: URLs ("gpu1:11434", "http://host:8000") or `ServerSpec`s.
ServerLike = str | ServerSpec
#: What a front accepts as a config: a TOML path, an already parsed dict, or a `Config`.
ConfigLike = str | Path | Mapping[str, Any] | Config

class DefaultInt(int):
    """A front's default number, told apart from the same number given on purpose: a config's
    per-server ``max_concurrency`` wins over a default ``workers``, never over one given."""


class DefaultStr(str):
    """A front's default name (OllamaManager's model), told apart from the same name given on
    purpose: the config's ``model`` wins over a default, never over an argument."""


#: Ollama-run-async's ``workers`` default: three calls at once on a server.
DEFAULT_WORKERS = DefaultInt(3)

#: Slots of the embedded llama.cpp server started by ``--local`` for `corral run`.
LOCAL_PARALLEL = 4
DEFAULT_MAX_ATTEMPTS = 5
APIS = ("ollama", "openai")


@dataclass(slots=True)
class Settings:
    """The servers for a job and the job's defaults, every source already merged."""

    servers: list[ServerSpec]
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    #: Requests in flight per server never exceed this (the fronts' ``workers`` / ``max_concurrent``:
    #: the number of calls at once, as Ollama-run-async and OllamaManager mean it); None: learnt.
    max_slots: int | None = None
    keep_alive: str | int | None = None
    timeout: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    hedge: bool = True
    #: Seconds a row may spend on "server busy" answers (429/503) before it fails; None: the engine's.
    max_busy_seconds: float | None = None
    #: The model the embedded server answers to, when ``local`` started it.
    local_model: str | None = None
    config: Config = field(default_factory=Config)

    def engine_settings(self, **overrides: Any) -> Any:
        """The engine's settings for this job: timeout, hedging and retries from here, the rest
        from ``overrides`` (e.g. ``concurrency=4``) or the engine's defaults."""
        from .engine import EngineSettings, RetryPolicy

        values: dict[str, Any] = {"timeout": self.timeout, "hedge": self.hedge,
                                  "retry": RetryPolicy(max_attempts=self.max_attempts)}
        if self.max_busy_seconds is not None:
            values["max_busy_seconds"] = self.max_busy_seconds
        if self.max_slots is not None:
            values["max_slots"] = self.max_slots
        values.update(overrides)
        return EngineSettings(**values)


def read_config(config: ConfigLike | None) -> Config:
    """A config from a path, a dict (as parsed from TOML) or a `Config`; an empty one for None."""
    if config is None or config == "":
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    return load_config(config)


def server_list(servers: ServerLike | Sequence[ServerLike], api: str) -> list[ServerSpec]:
    """``servers`` as specs: one URL or spec, or a list of them."""
    items = [servers] if isinstance(servers, (str, ServerSpec)) else list(servers)
    return [s if isinstance(s, ServerSpec) else server_from_url(str(s), api) for s in items]


def keyed_servers(servers: ServerLike | Sequence[ServerLike], api: str, api_key_env: str | None,
                  *, rpm: int | None = None, tpm: int | None = None) -> list[ServerSpec]:
    """``servers`` as specs, each without a key variable of its own given ``api_key_env`` (the
    name of the environment variable, never the key: ``--api-key-env OPENROUTER_KEY``), and each
    without rate limits of its own given ``rpm`` / ``tpm`` (``--rpm``, ``--tpm``)."""
    check_per_minute(rpm, "rpm")
    check_per_minute(tpm, "tpm")
    specs = server_list(servers, api)
    if api_key_env:
        specs = [s if s.api_key_env else replace(s, api_key_env=api_key_env) for s in specs]
    if rpm is not None:
        specs = [s if s.rpm else replace(s, rpm=rpm) for s in specs]
    if tpm is not None:
        specs = [s if s.tpm else replace(s, tpm=tpm) for s in specs]
    return specs


def resolve(
    *,
    servers: ServerLike | Sequence[ServerLike] | None = None,
    config: ConfigLike | None = None,
    api: str = "ollama",
    local: bool = False,
    local_parallel: int = LOCAL_PARALLEL,
    local_embedding: bool = False,
    stack: ExitStack | None = None,
    workers: int | None = None,
    require_servers: bool = False,
    model: str | None = None,
    system: str | None = None,
    options: Mapping[str, Any] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    format: Any = None,
    keep_alive: str | int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    hedge: bool | None = None,
    max_busy_seconds: float | None = None,
    api_key_env: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> Settings:
    """Merge what the user said with the config file and the environment.

    Servers: ``local=True`` or ``servers="local"`` (the embedded llama.cpp server, stopped when
    ``stack`` closes; its model answers every request), else ``servers``, else the config's, else
    ``OLLAMA_HOST`` (unless ``require_servers``: Ray's actors run elsewhere, where a local default
    would mean another machine's Ollama). ``workers`` gives every server that has no
    ``max_concurrency`` of its own that many slots, and is a hard cap: never more in flight on one
    server (a `DefaultInt`, a front's default, caps only a fleet where no server has its own).
    ``options`` must be known model options (`corral.options`), in the config file too;
    ``extra_options`` (and the config's) are sent as they are, for options corral does not know. ``timeout`` and
    ``max_busy_seconds`` must be finite numbers of seconds > 0 (`check_seconds`), ``workers`` at
    most `corral.limits.MAX_SLOTS_PER_SERVER` (`check_slots`). ``api_key_env`` names the
    environment variable holding the key for the ``servers`` given here (``--api-key-env``); the key
    itself is read when a request is sent, never stored. ``rpm`` / ``tpm`` limit each server that has no
    limit of its own (a config's ``rpm`` / ``tpm`` win) to that many requests / tokens per minute.
    """
    if api not in APIS:
        raise UsageError(f"api must be one of {', '.join(APIS)}, not {api!r}")
    check_slots(workers, "workers")
    check_seconds(timeout, "timeout")
    check_seconds(max_busy_seconds, "max_busy_seconds")
    check_per_minute(rpm, "rpm")
    check_per_minute(tpm, "tpm")
    cfg = read_config(config)
    checked = check_options(options)
    if _names_local(servers):
        local, servers = True, None
    local_model = None
    if local:
        if stack is None:
            raise UsageError("the embedded server needs a lifetime: pass stack=ExitStack()")
        spec = start_local(local_parallel, stack, embedding=local_embedding)
        specs = [spec]
        local_model = (spec.models or ("",))[0]
    elif servers is not None and servers != []:
        specs = keyed_servers(servers, api, api_key_env)
    elif cfg.servers:
        specs = list(cfg.servers)
    elif require_servers:
        raise UsageError("no servers: give config= (a cluster TOML path or dict) or servers=[URL, ...]")
    else:
        specs = default_servers()
    max_slots = None
    if workers is not None:
        # Given on purpose, workers caps every server; a default one gives way to a server's own
        # max_concurrency, and caps the fleet only when no server has one.
        if not isinstance(workers, DefaultInt) or not any(s.max_concurrency for s in specs):
            max_slots = int(workers)
        specs = [s if s.max_concurrency else replace(s, max_concurrency=int(workers)) for s in specs]
    if rpm is not None or tpm is not None:
        specs = keyed_servers(specs, api, None, rpm=rpm, tpm=tpm)
    return Settings(
        servers=specs,
        model=local_model or model or cfg.model,
        system=system or cfg.system_message,
        options={**cfg.options, **cfg.extra_options, **checked, **dict(extra_options or {})},
        max_slots=max_slots,
        format=format if format is not None else cfg.format,
        keep_alive=keep_alive if keep_alive is not None else cfg.keep_alive,
        timeout=timeout if timeout is not None else cfg.timeout,
        max_attempts=max_attempts or cfg.max_attempts or DEFAULT_MAX_ATTEMPTS,
        hedge=hedge if hedge is not None else cfg.hedge is not False,
        max_busy_seconds=max_busy_seconds if max_busy_seconds is not None else cfg.max_busy_seconds,
        local_model=local_model,
        config=cfg,
    )


def _names_local(servers: Any) -> bool:
    """``servers="local"`` (or ``["local"]``): the embedded model, as ``local=True``."""
    if isinstance(servers, (list, tuple)) and len(servers) == 1:
        servers = servers[0]
    return isinstance(servers, str) and servers.strip().lower() == "local"


def check_slots(value: int | None, name: str) -> int | None:
    """``value`` when it is a number of slots per server (or None); else a UsageError naming ``name``."""
    problem = None if value is None else slots_problem(value)
    if problem:
        raise UsageError(f"{name} {problem}")
    return value


def check_per_minute(value: int | None, name: str) -> int | None:
    """``value`` when it is a rate limit per minute (or None); else a UsageError naming ``name``."""
    problem = None if value is None else per_minute_problem(value)
    if problem:
        raise UsageError(f"{name} {problem}")
    return value


def check_seconds(value: float | None, name: str) -> float | None:
    """``value`` when it is a finite number of seconds > 0 (or None); else a UsageError naming ``name``:
    ``nan``, ``-1`` or ``0`` would disable a timeout or wait for ever, never what was meant."""
    problem = None if value is None else seconds_problem(value)
    if problem:
        raise UsageError(f"{name} {problem}")
    return value


def start_local(n_parallel: int, stack: ExitStack, *, embedding: bool = False) -> ServerSpec:
    """Start the embedded llama.cpp server; it stops when ``stack`` closes."""
    from .local import LocalServer

    print("corral: starting the embedded llama.cpp server (SmolLM2-135M)...", file=sys.stderr)
    server = stack.enter_context(LocalServer(n_parallel=n_parallel, embedding=embedding))
    # No max_concurrency: the engine reads the slots from llama.cpp's /props and keeps twice as many
    # requests in flight, the best setting measured on this server.
    return ServerSpec(url=server.url, api="openai", models=(server.model,), name="local")
