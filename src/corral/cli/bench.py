"""`corral bench`: per-model latency / TTFT / tokens/s, a concurrency sweep per server with its knee,
GPU utilisation; a table, CSV/JSON figures, an HTML report, and a tuned cluster file."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import UsageError
from . import app
from .common import (
    API_KEY_ENV_HELP,
    RPM_HELP,
    TPM_HELP,
    model_options,
    parse_option_pairs,
    read_text_arg,
    setup_logging,
)

LOCAL_PARALLEL = 8


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_levels(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--sweep {text!r}: expected numbers, e.g. --sweep 1,2,4,8,16") from None
    if not levels or levels[0] < 1:
        raise UsageError(f"--sweep {text!r}: levels must be positive, e.g. --sweep 1,2,4,8,16")
    return levels


@app.command("bench")
def bench_command(
    models: list[str] = typer.Option([], "--models", "--model", "-m", metavar="MODELS",
                                     help="Models, comma-separated or repeated (default: the config's model)."),
    prompt: str = typer.Option("Hello, how are you?", "--prompt", "-p", help="The test prompt."),
    runs: int = typer.Option(3, "--runs", "-n", help="Streamed runs per model and server."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config (ollama-batch-cluster's or [[servers]])."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL; repeat for several."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="NAME", help=API_KEY_ENV_HELP),
    rpm: Optional[int] = typer.Option(None, "--rpm", metavar="N", help=RPM_HELP),
    tpm: Optional[int] = typer.Option(None, "--tpm", metavar="N", help=TPM_HELP),
    local: bool = typer.Option(False, "--local", help="Bench the embedded llama.cpp model (SmolLM2-135M)."),
    parallel: int = typer.Option(LOCAL_PARALLEL, "--parallel", help="Slots of the --local server."),
    sweep: Optional[str] = typer.Option(None, "--sweep",
        help="Concurrency levels to sweep per server, e.g. 1,2,4,8,16."),
    sweep_model: Optional[str] = typer.Option(None, "--sweep-model", help="Model for the sweep (default: the first)."),
    waves: int = typer.Option(3, "--waves", help="Requests per sweep level = waves x level (at least 8)."),
    tolerance: float = typer.Option(0.03, "--tolerance", help="Knee: smallest level within this share of the best."),
    write_config: Optional[str] = typer.Option(None, "--write-config",
        help="Write the cluster file with each server's knee as max_concurrency."),
    report: Optional[str] = typer.Option(None, "--report", help="Write an HTML report with the plots."),
    output: list[str] = typer.Option([], "--output", "-o", metavar="FILE",
        help="Figures as .csv or .json (repeatable)."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="All figures as CSV."),
    json_path: Optional[str] = typer.Option(None, "--json", help="All figures as JSON."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (or @file)."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
    extra_option: list[str] = typer.Option([], "--extra-option", metavar="NAME=VALUE",
        help="An option sent as it is, unchecked: one the server knows and corral does not (repeatable)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict",
                                             help="Output tokens per request (the sweep: 64 unless set)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds per request."),
    store_path: Optional[str] = typer.Option(None, "--store",
        help="SQLite store for the GPU series (default: in memory)."),
    gpu_monitor: bool = typer.Option(True, "--gpu-monitor/--no-gpu-monitor", help="Sample nvidia-smi."),
    gpu_interval: Optional[float] = typer.Option(None, "--gpu-interval",
        help="Seconds between GPU samples (default 1)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Measure models and servers: latency, time to first token, tokens/s, the concurrency knee.

    \b
    Example:
      corral bench -s http://127.0.0.1:11434 -m llama3.2,gemma3:4b --runs 5
      corral bench --config cluster.toml --sweep 1,2,4,8,16 --write-config tuned.toml --report bench.html
    """
    import dataclasses
    from contextlib import ExitStack

    from rich.console import Console

    from .. import cluster as cluster_files
    from .. import runtime
    from ..bench.api import bench_async
    from ..bench.output import gpu_table, model_table, sweep_table, write_figures
    from ..settings import check_per_minute, resolve
    from ..store import Store

    setup_logging(verbose)
    if api not in ("ollama", "openai"):
        raise UsageError("--api must be ollama or openai")
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    if not 0 <= tolerance < 1:
        raise UsageError("--tolerance is a share, e.g. 0.03")
    levels = parse_levels(sweep)
    if write_config and not levels:
        raise UsageError("--write-config needs a --sweep to find each server's knee")
    outputs = [*output, *(p for p in (csv_path, json_path) if p)]
    for path in outputs:
        if not path.lower().endswith((".csv", ".json")):
            raise UsageError(f"{path}: figures are written as .csv or .json")
    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    out = Console(width=None if sys.stdout.isatty() else 120)

    def on_level(sweep_, level) -> None:  # type: ignore[no-untyped-def]
        err.print(f"corral: sweep {sweep_.server}: {level.concurrency} in flight -> "
                  f"{sweep_.throughput(level):.1f} {'tok/s' if sweep_.by_tokens else 'req/s'}", highlight=False)

    with ExitStack() as stack:
        job = resolve(servers=server or None, config=config, api=api, api_key_env=api_key_env, local=local,
                      rpm=check_per_minute(rpm, "--rpm"), tpm=check_per_minute(tpm, "--tpm"),
                      local_parallel=parallel,
                      stack=stack, system=read_text_arg(system, "--system"),
                      options=model_options(option, temperature, seed, max_tokens=max_tokens),
                      extra_options=parse_option_pairs(extra_option, "--extra-option"))
        names = _split(models) or [m for m in (job.model,) if m]
        if not names:
            raise UsageError("no model: corral bench --models llama3.2,gemma3:4b")
        store = stack.enter_context(Store(store_path)) if store_path else None
        result = runtime.run(bench_async(
            job.servers, names, prompt, runs, options=job.options, system=job.system, sweep=levels,
            sweep_model=sweep_model, waves=waves, tolerance=tolerance, timeout=timeout, store=store,
            gpu_monitor=gpu_monitor, gpu_interval=gpu_interval, on_level=on_level))
    for problem in result.problems:
        err.print(f"[yellow]corral: {problem}[/yellow]", highlight=False)
    if result.gpu_note:
        err.print(f"corral: {result.gpu_note}", highlight=False)
    out.print(model_table(result))
    if result.sweeps:
        out.print(sweep_table(result))
        for s in result.sweeps:
            best = s.best
            out.print(f"{s.server}: knee {s.knee} in flight"
                      + (f" ({s.throughput(best):.1f} {'tok/s' if s.by_tokens else 'req/s'} best, "
                         f"at {best.concurrency})" if best else ""), highlight=False)
    if result.gpu_summary:
        out.print(gpu_table(result.gpu_summary))
    for path in outputs:
        write_figures(result, path)
        err.print(f"corral: figures in {path}", highlight=False)
    if report:
        from ..bench.report import write_report

        write_report(result, report)
        err.print(f"corral: report in {report}", highlight=False)
    if write_config:
        knees = {s.server: s.knee for s in result.sweeps if s.knee}
        tuned = [dataclasses.replace(s, max_concurrency=knees[s.label]) if s.label in knees else s
                 for s in job.servers]
        header = ("written by corral bench --sweep " + ",".join(map(str, levels)) + ": max_concurrency is each "
                  "server's knee (" + ", ".join(f"{k} {v}" for k, v in knees.items()) + ")")
        cluster_files.write(write_config, cluster_files.render(
            tuned, model=job.config.model or names[0], system_message=job.config.system_message,
            options=job.config.options,
            header=header))
        err.print(f"corral: wrote {write_config} ({len(knees)} server(s) tuned)", highlight=False)
        if local:
            err.print("corral: note: the --local server's port is gone once bench exits", highlight=False)
    failed = [m for m in result.models if not m.runs]
    if failed or (levels and not result.sweeps):
        raise typer.Exit(1)
