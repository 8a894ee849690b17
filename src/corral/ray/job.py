"""`corral run FILES --ray ADDRESS`: table files through a Ray actor pool, one output per input file.

The unit of work, of output and of resume is the input file (a *partition*): Ray Data schedules
the pending partitions (``ray.data.from_items``) over a pool of :class:`PartitionWorker` actors,
each with one corral engine and its share of the fleet's slots. A worker streams its file in chunks
with corral's own table readers (memory stays bounded whatever the file size), fills run_analysis's
columns and writes ``<out>/<name>.parquet`` (or ``.jsonl``) as ``.part``, renamed when complete. A
re-run skips every partition whose output exists. Ray restarts a killed actor and re-runs its
partition from the start, so each row is in the output exactly once.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from ..config import OPENAI_KEY_ENV, ServerSpec
from ..errors import UsageError
from ..limits import CHUNK_ROWS
from ..sinks.output import write_whole
from ..sources.tables import batch_frame, open_parquet, read_table_chunks
from .worker import ActorEngine, TableJob, actor_settings, fleet_key, my_share, resolve_fleet

#: Input suffixes a directory is searched for (the formats Ray-scale inputs come in).
INPUT_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".ndjson")
OUTPUT_FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def discover(inputs: list[str]) -> list[Path]:
    """Input files from paths, directories (searched recursively) and globs, sorted, each once."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES]
            if not matches:
                raise UsageError(f"{item}: no {', '.join(INPUT_SUFFIXES)} files in this folder")
        elif any(ch in item for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not matches:
                raise UsageError(f"{item}: no file matches")
        elif path.is_file():
            matches = [path]
        else:
            raise UsageError(f"{item}: no such file or folder")
        for match in matches:
            if match.suffix.lower() not in INPUT_SUFFIXES:
                raise UsageError(f"{match}: --ray reads {', '.join(INPUT_SUFFIXES)} files")
        found.extend(matches)
    return sorted(dict.fromkeys(p.resolve() for p in found))


def partition_names(files: list[Path], fmt: str) -> list[str]:
    """One output name per input, from its path below the inputs' common folder (``2024/a.parquet``
    becomes ``2024__a.parquet``), so names never collide and stay the same when files are added."""
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    stems = ["__".join([*f.relative_to(root).parent.parts, f.stem]) for f in files]
    # a.csv and a.jsonl side by side: both keep their own suffix (a.csv.parquet, a.jsonl.parquet)
    clash = {s for s in stems if stems.count(s) > 1}
    return [(s + f.suffix if s in clash else s) + OUTPUT_FORMATS[fmt] for s, f in zip(stems, files)]


@dataclass(slots=True)
class Partition:
    """One unit of work, output and resume: a whole file, or a run of a Parquet file's row groups."""

    path: str
    output: str
    row_groups: list[int] | None = None


def plan_partitions(files: list[Path], names: list[str], out_dir: Path,
                    rows_per_partition: int | None) -> list[Partition]:
    """Every partition; a Parquet file with more rows than ``rows_per_partition`` is cut at row-group
    boundaries into runs of about that many rows, named by their row groups
    (``a.rg00000-00003.parquet``), so a name always means the same rows of the same file."""
    parts: list[Partition] = []
    for path, name in zip(files, names):
        groups = _row_groups(path) if rows_per_partition else None
        if not groups or sum(groups) <= (rows_per_partition or 0) or len(groups) == 1:
            parts.append(Partition(str(path), str(out_dir / name)))
            continue
        stem, suffix = name.rsplit(".", 1)
        run: list[int] = []
        rows = 0
        for index, count in enumerate(groups):
            run.append(index)
            rows += count
            if rows >= rows_per_partition or index == len(groups) - 1:  # type: ignore[operator]
                label = f"{stem}.rg{run[0]:05d}-{run[-1]:05d}.{suffix}"
                parts.append(Partition(str(path), str(out_dir / label), list(run)))
                run, rows = [], 0
    return parts


def _row_groups(path: Path) -> list[int] | None:
    """Rows per row group of a Parquet file (its footer only); None for other formats."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # unreadable: the worker reports it as that partition's error
        return None
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def key_env(fleet: list[ServerSpec]) -> dict[str, str]:
    """The variables holding the servers' keys, as this shell has them: handed to the actors in
    Ray's runtime_env, since the nodes they run on need not have them. Only the named variables
    travel, never written to the manifest or the outputs."""
    names = {spec.api_key_env or (OPENAI_KEY_ENV if spec.api == "openai" else None) for spec in fleet}
    return {name: os.environ[name] for name in sorted(n for n in names if n) if os.environ.get(name)}


def refuse_bad_tables(paths: list[str], job: TableJob) -> None:
    """Check every pending file's columns against the job before Ray starts (a missing text column,
    answers that would overwrite the table's own columns): a user's mistake is one line and exit 2,
    not a partition error that "run again" would never fix."""
    for path in paths:
        head = next(iter(read_table_chunks(path, chunk_size=1)), None)
        if head is not None:
            try:
                job.runner([str(c) for c in head.columns], lambda *_: None)
            except UsageError as exc:
                raise UsageError(f"{path}: {exc}") from None


def read_partition(part: Partition, chunk_size: int) -> Any:
    """The partition's rows as DataFrame chunks: corral's own streamed readers, or for a run of row
    groups the same Parquet reading restricted to them."""
    if part.row_groups is None:
        return read_table_chunks(part.path, chunk_size=chunk_size)
    parquet = open_parquet(Path(part.path))
    return (batch_frame(batch, None)
            for batch in parquet.iter_batches(batch_size=chunk_size, row_groups=part.row_groups))


@dataclass(slots=True)
class PartitionStats:
    path: str
    output: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None


class PartitionWorker:
    """A Ray Data actor: each batch row names an input file and its output; returns one stats row
    per partition. A partition that cannot be done (a missing column, an unreadable file) is
    reported in the stats' ``error``, leaves no output, and stays pending for the next run."""

    def __init__(self, *, fleet: list[Any], num_actors: int, job: TableJob, settings: dict[str, Any],
                 chunk_size: int = CHUNK_ROWS) -> None:
        self.job = job
        self.chunk_size = chunk_size
        self.index, servers = my_share(fleet, num_actors, fleet_key(fleet, num_actors, "run"))
        self.engine: ActorEngine | None = None
        self.broken: str | None = None
        try:
            self.engine = ActorEngine(servers, actor_settings(**settings))
        except Exception as exc:  # no server answers this actor: each partition says why, in one line
            self.broken = str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [self.partition(Partition(str(p), str(o), _groups(g)))
                for p, o, g in zip(batch["path"], batch["output"], batch["row_groups"])]
        return pd.DataFrame([{f: getattr(s, f) for f in PartitionStats.__slots__} for s in rows])

    def partition(self, part: Partition) -> PartitionStats:
        stats = PartitionStats(path=part.path, output=part.output)
        started = time.monotonic()
        try:
            if self.engine is None:
                raise UsageError(self.broken or "no engine")
            report = self.engine.run_file(part.path, part.output, self.job,
                                          read_partition(part, self.chunk_size))
            stats.ok, stats.failed = report.stats.ok, report.stats.failed  # rows not sent say so in error
            stats.rows = report.written
        except Exception as exc:  # the partition's error, not the job's: reported, run again later
            stats.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UsageError) else str(exc)
        stats.seconds = round(time.monotonic() - started, 3)
        return stats


def _groups(value: Any) -> list[int] | None:
    """Row groups as Ray hands them back: a list, a numpy array, or a missing value (whole file)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    groups = [int(g) for g in value]
    return groups or None


def connect(address: str) -> bool:
    """``ray.init`` for ``--ray``: ``local`` starts a fresh local instance (no dashboard), ``auto``
    joins the cluster of this machine (``ray start --head`` / RAY_ADDRESS), ``ray://host:10001`` goes
    through Ray Client, and ``host:port`` is a cluster's GCS address. Returns whether this call
    started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    # A fresh local instance: no dashboard (and, from the CLI, on the loopback address only: see
    # corral.cli.ray_run).
    quiet: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"--ray {address}: cannot connect to Ray: {exc}") from None
    return True


def run_files(inputs: list[str], output: str, *, address: str, job: TableJob, config: Any = None,
              servers: Any = None, api: str = "ollama", workers: int | None = None,
              num_actors: int | None = None, output_format: str = "parquet", chunk_size: int = CHUNK_ROWS,
              timeout: float | None = None, max_attempts: int | None = None, max_json_retries: int = 2,
              progress: str = "auto", actor_cpus: float = 1.0,
              rows_per_partition: int | None = 1_000_000) -> list[PartitionStats]:
    """Run every pending partition; returns the stats of the partitions run now."""
    import ray

    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{output}: with --ray, -o is a folder (one output file per input file)")
    # An output folder inside an input folder: its files are outputs, never inputs of the next run.
    files = [f for f in discover(inputs) if not f.is_relative_to(out_dir.resolve())]
    if not files:
        raise UsageError(f"no input files outside the output folder {output}")
    names = partition_names(files, output_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    fleet, resolved = resolve_fleet(config, servers, api, workers, system=job.system, options=job.options,
                                    timeout=timeout, max_attempts=max_attempts)
    if not job.model_names:
        if not resolved.model:
            raise UsageError("no model: give -m MODEL or a config with model = ...")
        job.model_names = (resolved.model,)
    job.system = resolved.system
    job.options = resolved.options
    parts = plan_partitions(files, names, out_dir, rows_per_partition)
    pending = [p for p in parts if not Path(p.output).exists()]
    refuse_bad_tables(sorted({p.path for p in pending}), job)
    say = (lambda text: None) if progress == "none" else (lambda text: print(text, file=sys.stderr, flush=True))
    split = f" from {len(files)} file(s)" if len(parts) != len(files) else ""
    say(f"corral: {len(parts)} partition(s){split}, {len(parts) - len(pending)} already complete in {output}")
    if not pending:
        return []
    started_ray = connect(address)
    if progress in ("none", "log") or not sys.stderr.isatty():
        ray.data.DataContext.get_current().enable_progress_bars = False  # our lines say it all
    total_slots = sum(s.max_concurrency or 0 for s in fleet)
    actors = num_actors or 0
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1) // actor_cpus) or 1
        # More actors than partitions would hold slot shares that no partition uses.
        actors = min(num_actors, len(pending)) if num_actors else max(1, min(len(pending), total_slots, cpus))
        if actors > total_slots:
            raise UsageError(f"{actors} actors but the fleet has {total_slots} slot(s): use --ray-actors "
                             f"{total_slots} or fewer")
        say(f"corral: running {len(pending)} partition(s) on {actors} Ray actor(s) sharing "
            f"{total_slots} slot(s) of {len(fleet)} server(s)")
        settings = {"timeout": resolved.timeout, "max_attempts": resolved.max_attempts,
                    "max_json_retries": max_json_retries}
        ds = ray.data.from_items([{"path": p.path, "output": p.output, "row_groups": p.row_groups or []}
                                  for p in pending], override_num_blocks=len(pending))
        keys = key_env(fleet)
        remote_args: dict[str, Any] = {"runtime_env": {"env_vars": keys}} if keys else {}
        results = ds.map_batches(
            PartitionWorker, batch_size=1, batch_format="pandas", num_cpus=actor_cpus,
            compute=ray.data.ActorPoolStrategy(size=actors), **remote_args,
            fn_constructor_kwargs={"fleet": fleet, "num_actors": actors, "job": job, "settings": settings,
                                   "chunk_size": chunk_size})
        done: list[PartitionStats] = []
        clock = time.monotonic()
        manifest = RunManifest(out_dir, address, job, fleet, actors, len(parts), len(parts) - len(pending))
        rows = 0
        for row in results.iter_rows():
            stats = PartitionStats(**{f: _plain(row[f]) for f in PartitionStats.__slots__})
            done.append(stats)
            rows += stats.rows
            what = (f"error: {stats.error}" if stats.error else
                    f"{stats.rows} rows, {stats.failed} failed, {stats.seconds:.1f}s")
            rate = rows / max(time.monotonic() - clock, 1e-9)
            say(f"corral: [{len(done)}/{len(pending)}] {Path(stats.output).name}: {what} | "
                f"{rows} rows in all, {rate:.0f} rows/s")
            manifest.save(done, "running")
        manifest.save(done, "complete" if not any(s.error for s in done) else "incomplete")
        return done
    finally:
        from .ledger import drop_ledger

        try:
            drop_ledger(fleet_key(fleet, actors, "run"))
        except Exception:
            pass
        if started_ray:
            ray.shutdown()


class RunManifest:
    """``<out>/corral-ray.manifest.json``: what this run asked of which servers, and what each
    partition it ran came to (rewritten after every partition; one file per output folder, for the
    latest run)."""

    def __init__(self, out_dir: Path, address: str, job: TableJob, fleet: list[Any], actors: int,
                 partitions: int, already: int) -> None:
        from .._version import __version__
        from ..manifest import redact_argv

        self.path = out_dir / "corral-ray.manifest.json"
        self.data: dict[str, Any] = {
            "corral_version": __version__, "ray_version": _ray_version(), "command": redact_argv(sys.argv),
            "ray_address": address, "started_at": time.time(),
            "job": {"text_column": job.text_column, "models": list(job.model_names),
                    "prompt_template": job.prompt_template, "json_keys": job.json_keys,
                    "json_schema": job.json_schema, "fanout": job.fanout, "system": job.system,
                    "options": job.options, "id_column": job.id_column},
            "servers": [{"url": s.url, "api": s.api, "slots": s.max_concurrency} for s in fleet],
            "actors": actors, "partitions": {"total": partitions, "already_complete": already},
        }

    def save(self, done: list[PartitionStats], status: str) -> None:
        self.data.update(status=status, finished_at=time.time(),
                         counts={"partitions_run": len(done), "rows": sum(s.rows for s in done),
                                 "ok": sum(s.ok for s in done), "failed": sum(s.failed for s in done),
                                 "partitions_failed": sum(1 for s in done if s.error)},
                         run=[{f: getattr(s, f) for f in PartitionStats.__slots__} for s in done])
        write_whole(self.path, orjson.dumps(self.data, option=orjson.OPT_INDENT_2, default=str))


def _ray_version() -> str:
    import ray

    return ray.__version__


def _plain(value: Any) -> Any:
    """numpy scalars and NaN from a Ray row back to Python values."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value
