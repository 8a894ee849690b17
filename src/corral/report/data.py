"""What the report shows, read from a store: aggregates computed in SQLite, never the whole table.

A store may hold millions of results, so every figure is built from GROUP BY queries (counts, sums,
time buckets) and latency quartiles from at most `LATENCY_SAMPLE` values per server. Stores written
before manifests existed still report: their runs simply have no manifest section.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import UsageError
from ..jobs import default_store_path
from ..store import JournalReader, unpack_json

LATENCY_SAMPLE = 200_000
EXAMPLES_PER_KIND = 3
MAX_BUCKETS = 240
MIN_PER_BUCKET = 2
BUCKET_SIZES = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


@dataclass
class ServerSummary:
    server: str
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: dict[str, float] | None = None   # q1, median, q3, p5, p95, mean, n
    cost: float | None = None                 # from the server's price_in / price_out, when it has one


@dataclass
class ErrorKind:
    kind: str
    count: int
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Throughput:
    run_id: int | None
    bucket_seconds: float
    starts: list[float]      # epoch seconds of each bucket's start
    counts: list[int]        # results finished in the bucket


@dataclass
class ReportData:
    store_path: str
    runs: list[dict[str, Any]]
    ok: int
    failed: int
    servers: list[ServerSummary]
    models: list[dict[str, Any]]
    errors: list[ErrorKind]
    attempts: list[tuple[int, int]]          # (attempts, rows)
    throughput: list[Throughput]
    gpu: dict[tuple[int, str], list[tuple[float, float | None, float | None]]]
    manifest: dict[str, Any] | None          # the run's that produced the data (see `producing_manifest`)
    agreement: dict[str, Any] | None         # the latest fan-out agreement, if any
    live: dict[str, Any] | None = None       # the latest run's status when it was still running

    @property
    def rows(self) -> int:
        return self.ok + self.failed


def resolve_store(path: str | Path) -> Path:
    """STORE_OR_OUTPUT: a store itself, or an output (file or folder) whose store sits beside it."""
    given = Path(path)
    if given.is_file() and _is_sqlite(given):
        return given
    if given.name.endswith(".manifest.json"):
        recorded = _recorded_store(given) if given.is_file() else None
        if recorded is not None:
            return recorded
        given = given.with_name(given.name[: -len(".manifest.json")])
    candidate = default_store_path(None, str(given)) if given.is_dir() else default_store_path(str(given), None)
    if candidate is None or not candidate.is_file():
        raise UsageError(f"{path}: no corral store here or beside it (looked for {candidate}); "
                         "give the .corral.db file, or the output the run wrote")
    return candidate


def _recorded_store(manifest: Path) -> Path | None:
    """The store a manifest names, found from here or from the manifest's folder."""
    from ..manifest import load_manifest

    recorded = (load_manifest(manifest).get("output") or {}).get("store")
    if not recorded or recorded == ":memory:":
        return None
    for candidate in (Path(recorded), manifest.parent / recorded):
        if candidate.is_file():
            return candidate
    return None


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def load(path: str | Path) -> ReportData:
    """Read-only and without corral's lock (`JournalReader`): on a running job this is a snapshot
    of what is committed so far, and the job goes on undisturbed."""
    from ..status import RUNNING, read_status

    store_path = resolve_store(path)
    with JournalReader(store_path) as store:
        q = store.query
        now = read_status(store)
        status = dict(q("SELECT status, COUNT(*) FROM results GROUP BY status"))
        runs = [_run(row) for row in q(
            f"SELECT id, started_at, finished_at, argv, counts, "
            f"{'manifest' if store.has_column('runs', 'manifest') else 'NULL'} FROM runs ORDER BY id")]
        manifests = [r["manifest"] for r in runs if r["manifest"]]
        servers = _servers(store)
        _price(servers, manifests)
        return ReportData(
            store_path=str(store_path), runs=runs, ok=status.get("ok", 0),
            failed=status.get("failed", 0), servers=servers, models=_models(store),
            errors=_errors(store),
            attempts=[(int(a or 0), n) for a, n in q(
                "SELECT attempts, COUNT(*) FROM results GROUP BY attempts ORDER BY attempts")],
            throughput=_throughput(store), gpu=_gpu(store),
            manifest=producing_manifest(manifests),
            agreement=next((m["agreement"] for m in reversed(manifests)
                            if isinstance(m.get("agreement"), dict) and m["agreement"].get("keys")), None),
            live=now.as_dict() if now.state == RUNNING else None,
        )


def producing_manifest(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest of the run that produced the data: the latest that sent requests. A resume that
    found everything journaled sends nothing; its manifest (no servers asked, no tokens) would
    describe no answer in the store. A running run counts, whatever it has sent so far."""
    for manifest in reversed(manifests):
        counts = manifest.get("counts") or {}
        if counts.get("sent") or manifest.get("status") == "running":
            return manifest
    return manifests[-1] if manifests else None


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _stored_json(stored: str | bytes | None) -> Any:
    """A journal's JSON column as any corral version wrote it; None when it cannot be read."""
    try:
        return unpack_json(stored)
    except (orjson.JSONDecodeError, zlib.error):
        return None


def _run(row: tuple[Any, ...]) -> dict[str, Any]:
    run_id, started, finished, argv, counts, manifest = row
    return {"id": run_id, "started_at": started, "finished_at": finished, "argv": _json(argv) or [],
            "counts": _json(counts) or {}, "manifest": _json(manifest)}


def _servers(store: JournalReader) -> list[ServerSummary]:
    found: dict[str, ServerSummary] = {}
    for server, status, count, prompt, completion in store.query(
            "SELECT COALESCE(server, '(not sent)'), status, COUNT(*), SUM(prompt_eval_count), "
            "SUM(eval_count) FROM results GROUP BY 1, 2 ORDER BY 1"):
        summary = found.setdefault(server, ServerSummary(server))
        setattr(summary, "ok" if status == "ok" else "failed", count)
        summary.prompt_tokens += prompt or 0
        summary.completion_tokens += completion or 0
    total = store.query("SELECT COUNT(*) FROM results WHERE latency IS NOT NULL")[0][0]
    step = max(1, math.ceil(total / LATENCY_SAMPLE))
    latencies: dict[str, list[float]] = defaultdict(list)
    for server, latency in store.query(
            "SELECT COALESCE(server, '(not sent)'), latency FROM results "
            "WHERE latency IS NOT NULL AND rowid % ? = 0", (step,)):
        latencies[server].append(latency)
    for server, values in latencies.items():
        if server in found:
            found[server].latency = latency_summary(values)
    return list(found.values())


def _price(servers: list[ServerSummary], manifests: list[dict[str, Any]]) -> None:
    """Each server's cost of the tokens in the store, at the latest price its runs' manifests give
    (``price_in`` / ``price_out`` per million tokens, from the config)."""
    from ..manifest import server_cost, spec_from_dict

    specs = {entry.get("label"): spec_from_dict(entry["spec"])
             for m in manifests for entry in m.get("servers") or [] if isinstance(entry.get("spec"), dict)}
    for summary in servers:
        spec = specs.get(summary.server)
        if spec is not None:
            summary.cost = server_cost(spec, summary.prompt_tokens, summary.completion_tokens).get("cost")


def latency_summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"n": len(values), "mean": sum(values) / len(values), "p5": quantile(values, 0.05),
            "q1": quantile(values, 0.25), "median": quantile(values, 0.5),
            "q3": quantile(values, 0.75), "p95": quantile(values, 0.95)}


def quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), without numpy."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _models(store: JournalReader) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for model, status, count, prompt, completion in store.query(
            "SELECT COALESCE(model, ''), status, COUNT(*), SUM(prompt_eval_count), SUM(eval_count) "
            "FROM results GROUP BY 1, 2 ORDER BY 1"):
        entry = rows.setdefault(model, {"model": model, "ok": 0, "failed": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0})
        entry["ok" if status == "ok" else "failed"] = count
        entry["prompt_tokens"] += prompt or 0
        entry["completion_tokens"] += completion or 0
    return list(rows.values())


def _errors(store: JournalReader) -> list[ErrorKind]:
    kinds = [ErrorKind(kind, count) for kind, count in store.query(
        "SELECT COALESCE(error_kind, 'unknown'), COUNT(*) FROM results WHERE status = 'failed' "
        "GROUP BY 1 ORDER BY 2 DESC, 1")]
    for kind in kinds:
        for request, error, server, attempts, code, model, response in store.query(
                "SELECT request, error, server, attempts, status_code, model, response FROM results "
                "WHERE status = 'failed' AND COALESCE(error_kind, 'unknown') = ? LIMIT ?",
                (kind.kind, EXAMPLES_PER_KIND)):
            kind.examples.append({"prompt": _prompt_of(_stored_json(request)), "error": error, "server": server,
                                  "attempts": attempts, "status_code": code, "model": model,
                                  "response": response})
    return kinds


def _prompt_of(asked: Any) -> str:
    """The last user message of a stored request (what a person calls the prompt)."""
    if not isinstance(asked, dict):
        return ""
    for message in reversed(asked.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else orjson.dumps(content).decode()
    inputs = asked.get("inputs") or []
    return str(inputs[0]) if inputs else ""


def bucket_size(span: float, rows: int) -> float:
    """The smallest round bucket that keeps a run's curve under MAX_BUCKETS points and holds
    `MIN_PER_BUCKET` rows on average (finer buckets draw noise, not throughput)."""
    wanted = max(span / MAX_BUCKETS, MIN_PER_BUCKET * span / max(rows, 1))
    for size in BUCKET_SIZES:
        if size >= wanted:
            return size
    return BUCKET_SIZES[-1]


def _throughput(store: JournalReader) -> list[Throughput]:
    curves = []
    for run_id, first, last, rows in store.query(
            "SELECT run_id, MIN(finished_at), MAX(finished_at), COUNT(*) FROM results "
            "WHERE finished_at IS NOT NULL GROUP BY run_id ORDER BY run_id"):
        size = bucket_size(last - first, rows)
        buckets = dict(store.query(
            "SELECT CAST((finished_at - ?) / ? AS INTEGER), COUNT(*) FROM results "
            "WHERE finished_at IS NOT NULL AND run_id IS ? GROUP BY 1", (first, size, run_id)))
        span = max(buckets) + 1 if buckets else 0
        curves.append(Throughput(run_id, size, [first + i * size for i in range(span)],
                                 [buckets.get(i, 0) for i in range(span)]))
    return curves


def _gpu(store: JournalReader) -> dict[tuple[int, str], list[tuple[float, float | None, float | None]]]:
    series: dict[tuple[int, str], list[tuple[float, float | None, float | None]]] = defaultdict(list)
    if "gpu_samples" not in store.tables:  # a store from before GPU sampling
        return {}
    for gpu, name, t, utilization, memory in store.query(
            "SELECT gpu, COALESCE(name, ''), t, utilization, memory_used FROM gpu_samples ORDER BY gpu, t"):
        series[(gpu, name)].append((t, utilization, memory))
    return dict(series)
