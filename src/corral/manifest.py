"""The run manifest: which model exactly, which prompt, which settings, what came of it.

Research users publish what corral produces, and reviewers ask how it was made. Every front (``corral
run``, ``analyze``, ``fill`` and the Python functions) hands a `ManifestRecorder` to
`corral.jobs.run_requests`, which fills it at the two moments only it knows: after the servers are
probed (their versions and each model's digest) and when the run ends (counts, tokens, wall time).
The manifest is kept in the store's ``runs`` table and, when the job has an output path, written
beside it as ``<output>.manifest.json``.

Nothing secret goes in: API keys are only ever named by their environment variable, command-line
values of ``--api-key``-like flags are replaced by ``***``, and so are passwords in URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._version import __version__
from .config import ServerSpec
from .engine.servers import resolve_model
from .errors import UsageError
from .requests import GROUP_SEP
from .secrets import REDACTED, redact_url

if TYPE_CHECKING:
    from .engine import Engine, EngineSettings
    from .engine.rates import RateLimiter
    from .store import Store

MANIFEST_FORMAT = 1
DESCRIBE_TIMEOUT = 10.0

# Flag or option names whose value is a secret: --api-key, --hf-token, -O api_key=..., password=...
# Whole names only: --max-tokens and keep_alive are not secrets.
_SECRET_NAME = re.compile(
    r"-*(?:[\w-]*[-_])?(?:api[-_]?key|key|token|secret|password|passwd|credentials?|auth(?:orization)?)",
    re.I)


# -- secrets --------------------------------------------------------------------------------------

def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line as the user typed it, minus secrets; the program is shown as ``corral``
    (``sys.argv[0]`` is an absolute path that says nothing about the run)."""
    out = ["corral"]
    hide_next = False
    for arg in argv[1:]:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if arg.startswith("-") and _SECRET_NAME.fullmatch(name):
            if eq:
                out.append(f"{name}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        if eq and not arg.startswith("-") and _SECRET_NAME.fullmatch(name):  # -O api_key=...
            out.append(f"{name}={REDACTED}")
            continue
        out.append(redact_url(arg))
    return out


def redact_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Model options with secret-looking names hidden. Prompts and schemas are never touched: they
    must stay exact for the manifest to describe (and reproduce) the run."""
    if options is None:
        return None
    return {k: REDACTED if _SECRET_NAME.fullmatch(str(k)) else v for k, v in options.items()}


# -- inputs ---------------------------------------------------------------------------------------

def manifest_path(output: str | os.PathLike[str] | None,
                  output_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """``<output>.manifest.json``; for a folder of per-prompt files, beside the folder (`corral merge`
    reads every JSON file inside it)."""
    if output:
        return Path(f"{output}.manifest.json")
    if output_dir:
        return Path(f"{Path(output_dir)}.manifest.json")
    return None


def file_facts(path: str | os.PathLike[str], rows: int | None) -> dict[str, Any]:
    """The input file as a reviewer can check it: path as given, SHA-256, size, row count."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": size, "rows": rows}


def data_facts(kind: str, chunks: Iterable[bytes], rows: int) -> dict[str, Any]:
    """An in-memory input (a prompt list, a DataFrame) fingerprinted from its canonical bytes."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return {"path": None, "kind": kind, "sha256": digest.hexdigest(), "rows": rows}


def spec_dict(spec: ServerSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["url"] = redact_url(spec.url)
    data["models"] = list(spec.models) if spec.models is not None else None
    return data


def spec_from_dict(data: dict[str, Any]) -> ServerSpec:
    known: dict[str, Any] = {f: data[f] for f in ServerSpec.__dataclass_fields__ if f in data}
    if known.get("models") is not None:
        known["models"] = tuple(known["models"])
    return ServerSpec(**known)


def engine_settings(settings: EngineSettings, checked_answers: bool = False) -> dict[str, Any]:
    """The settings a run used; ``content_retries`` only when the caller checked answers itself
    (a table's JSON keys or schema)."""
    return {
        "timeout": settings.timeout, "max_attempts": settings.retry.max_attempts,
        "busy_attempts": settings.retry.busy_attempts, "concurrency": settings.concurrency,
        "max_slots": settings.max_slots,
        "max_in_flight": settings.max_in_flight, "rate_limit_delay": settings.rate_limit_delay,
        "max_outage": settings.max_outage, "retry_failed": settings.retry_failed,
        "content_retries": settings.content_retries if checked_answers else None,
        "hedge": settings.hedge, "adaptive_slots": settings.adaptive_slots and not settings.concurrency,
        "longest_first": settings.longest_first,
    }


# -- servers --------------------------------------------------------------------------------------

async def describe_servers(engine: Engine, models: Iterable[str],
                           timeout: float = DESCRIBE_TIMEOUT) -> list[dict[str, Any]]:
    """Every configured server: version and model digests for live ones, the reason for the others.

    A server that fails to describe itself still gets an entry (from its probe), so a manifest is
    never lost to provenance: the run matters more than its paperwork."""
    names = list(dict.fromkeys(n for m in models for n in m.split(GROUP_SEP) if n))

    async def one(server: Any) -> dict[str, Any]:
        own = {name: resolve_model(server, name) for name in names}
        wanted = {name: own_name for name, own_name in own.items() if own_name}
        entry: dict[str, Any] = {"label": server.label, "url": redact_url(server.spec.url),
                                 "api": server.spec.api, "reachable": True, "slots": server.slots,
                                 "spec": spec_dict(server.spec)}
        try:
            described = await server.backend.describe(list(wanted.values()), timeout)
        except Exception as exc:  # noqa: BLE001 - any failure here must not stop the run
            entry.update(kind=server.spec.api, version=server.info.version, describe_error=str(exc),
                         models={name: {"digest": (server.info.models.get(own_name) or {}).get("digest")}
                                 for name, own_name in wanted.items()})
            return entry
        found = described.get("models") or {}
        entry.update(kind=described.get("kind"), version=described.get("version"),
                     models={name: found.get(own_name, {}) for name, own_name in wanted.items()})
        return entry

    live = list(await asyncio.gather(*(one(s) for s in engine.servers)))
    live_specs = {id(s.spec) for s in engine.servers}
    down = [{"label": spec.label, "url": redact_url(spec.url), "api": spec.api, "reachable": False,
             "spec": spec_dict(spec)} for spec in engine.specs if id(spec) not in live_specs]
    for entry, message in zip(down, engine.unreachable):
        entry["error"] = message
    return live + down


def model_digests(manifest: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """model -> {server label -> digest}, from a manifest's servers."""
    digests: dict[str, dict[str, str | None]] = {}
    for server in manifest.get("servers") or []:
        for model, facts in (server.get("models") or {}).items():
            digests.setdefault(model, {})[server.get("label", "?")] = (facts or {}).get("digest")
    return digests


def digest_warnings(servers: list[dict[str, Any]]) -> list[str]:
    """A model whose servers hold different builds: results would mix two models under one name."""
    warnings = []
    for model, by_server in model_digests({"servers": servers}).items():
        if len({d for d in by_server.values()}) > 1:
            listed = ", ".join(f"{label} {short_digest(d)}" for label, d in by_server.items())
            warnings.append(f"model {model} is not the same on every server: {listed}")
    return warnings


def digest_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per model whose digest differs between two manifests (reproducing a run)."""
    before, after = model_digests(old), model_digests(new)
    changes = []
    for model, old_by_server in before.items():
        old_set = {d for d in old_by_server.values() if d}
        new_set = {d for d in (after.get(model) or {}).values() if d}
        if not new_set:
            changes.append(f"model {model}: no digest now (was {_digest_list(old_set)})")
        elif old_set and new_set != old_set:
            changes.append(f"model {model}: digest changed from {_digest_list(old_set)} "
                           f"to {_digest_list(new_set)}")
    return changes


def short_digest(digest: str | None) -> str:
    if not digest:
        return "(none)"
    prefix, _, value = digest.rpartition(":")
    return f"{prefix + ':' if prefix else ''}{value[:12]}"


def _digest_list(digests: set[str]) -> str:
    return ", ".join(short_digest(d) for d in sorted(digests)) or "(none)"


# -- the recorder ---------------------------------------------------------------------------------

def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class ManifestRecorder:
    """Builds one run's manifest in steps and saves it (store, and file when ``path`` is set) at each.

    ``job`` is what the front was asked to do (models, options, format, system message, prompt
    template...); ``input`` comes from `file_facts` or `data_facts`."""

    kind: str
    job: dict[str, Any]
    input: dict[str, Any]
    path: Path | None = None
    output: dict[str, Any] = field(default_factory=dict)
    argv: Sequence[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = field(default=None, init=False)
    _store: Store | None = field(default=None, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)

    async def begin(self, engine: Engine, store: Store, settings: EngineSettings,
                    models: Iterable[str], *, checked_answers: bool = False) -> None:
        """Called by run_requests once the servers are probed and before any request is sent.
        ``checked_answers``: the run was given its own answer check (``Engine.run(validate=...)``)."""
        self._store = store
        self.run_id = store.run_id
        self._t0 = time.time()
        servers = await describe_servers(engine, models)
        self.data = {
            "corral_manifest": MANIFEST_FORMAT, "corral_version": __version__, "kind": self.kind,
            "run_id": self.run_id, "status": "running", "started_at": _iso(self._t0), "finished_at": None,
            "wall_seconds": None,
            "command": redact_argv(self.argv) if self.argv else None,
            "python": platform.python_version(), "platform": platform.platform(terse=True),
            "input": self.input, "output": {**self.output, "store": store.path},
            "job": {**self.job, "options": redact_options(self.job.get("options"))},
            "engine": engine_settings(settings, checked_answers),
            "servers": servers, "warnings": digest_warnings(servers),
            "counts": None, "tokens": None, "per_server": None,
        }
        self.save()

    def end(self, engine: Engine, status: str, gpus: list[dict[str, Any]] | None = None) -> None:
        """Called by run_requests when the run stops: complete, interrupted or failed."""
        if not self.data:
            return
        now = time.time()
        self.data.update({"status": status, "finished_at": _iso(now),
                          "wall_seconds": round(now - self._t0, 3), **_figures(engine)})
        if gpus:
            self.data["gpus"] = gpus
        self.save()

    def progress(self, engine: Engine) -> None:
        """The counts so far, while the run goes on (the status stays "running"): a manifest read
        mid-run says how far it got instead of null."""
        if not self.data or self.data.get("status") != "running":
            return
        self.data.update(_figures(engine))
        self.save()

    def update(self, **sections: Any) -> None:
        """Add what only the front knows once the output is written (e.g. fan-out agreement)."""
        if not self.data:
            return
        self.data.update(sections)
        self.save()

    def save(self) -> None:
        store = self._store
        if store is not None and self.run_id is not None:
            if not store.closed:
                store.save_manifest(self.data, self.run_id)
            elif store.path != ":memory:":  # a section added after the job closed its store
                from .store import Store

                with Store(store.path) as reopened:
                    reopened.save_manifest(self.data, self.run_id)
        if self.path is not None:
            write_manifest(self.path, self.data)


def _figures(engine: Engine) -> dict[str, Any]:
    """Counts, tokens and each server's share, as the engine has them now."""
    stats = engine.stats
    return {
        "counts": {"total": stats.total, "done": stats.done, "ok": stats.ok, "failed": stats.failed,
                   "cached": stats.cached, "deduplicated": stats.deduplicated, "sent": stats.sent,
                   "retried": stats.retries},
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
        "per_server": [{"label": s.label, "requests": s.stats.requests, "ok": s.stats.ok,
                        "errors": s.stats.errors, "hedged": s.stats.hedges,
                        "cancelled": s.stats.cancelled, "prompt_tokens": s.stats.prompt_tokens,
                        "completion_tokens": s.stats.completion_tokens,
                        "busy_seconds": round(s.stats.busy_seconds, 3), "benched": s.stats.benched,
                        # slots per model as learnt by the end (they start at the "slots" above)
                        "learnt_slots": {m: c.limit for m, c in s.controls.items()},
                        **server_cost(s.spec, s.stats.prompt_tokens, s.stats.completion_tokens),
                        **({"rate_limit": rate_limit_figures(s.rates)} if s.rates is not None else {})}
                       for s in engine.servers],
    }


def rate_limit_figures(limiter: RateLimiter) -> dict[str, Any]:
    """What a server's rate limiter did: its budgets and its counters (never how long it waited)."""
    return {"rpm": limiter.rpm, "tpm": limiter.tpm, "started": limiter.admitted,
            "held": limiter.held, "refused": limiter.refused, "paused": limiter.pauses,
            "peak_requests_per_minute": limiter.peak_requests,
            "peak_tokens_per_minute": limiter.peak_tokens}


def server_cost(spec: ServerSpec, prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
    """``{"cost": ...}`` from the server's ``price_in`` / ``price_out`` (per million tokens), or {}
    for a server with no price."""
    if spec.price_in is None and spec.price_out is None:
        return {}
    cost = (prompt_tokens * (spec.price_in or 0.0) + completion_tokens * (spec.price_out or 0.0)) / 1e6
    return {"cost": round(cost, 6)}


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all (corral.sinks.output.write_whole), so a reader never sees half a
    manifest."""
    from .sinks.output import write_whole

    try:
        write_whole(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the manifest: {exc.strerror or exc}") from None


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path}: not a JSON manifest ({exc})") from None
    if not isinstance(data, dict) or "corral_manifest" not in data:
        raise UsageError(f"{path}: not a corral manifest (no corral_manifest field)")
    return data
