"""`corral run`: a prompt file through every server, durably, results in input order."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import UsageError
from . import app
from .common import API_KEY_ENV_HELP, RPM_HELP, TPM_HELP

if TYPE_CHECKING:
    from ..config import ServerSpec
    from ..reproduce import Reproduction
    from ..sources import Defaults


@app.command("run")
def run_command(
    input: Optional[list[str]] = typer.Argument(
        None,
            metavar="INPUT", help="Prompt file: JSONL (any shape) or text. With --ray: table files, folders or globs."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Same as INPUT (ollama-batch-cluster's flag)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Results JSONL, in input order."),
    output_dir: Optional[str] = typer.Option(
        None, "--output-dir", "--output_dir",
        help="One {prompt, response} JSON file per prompt, failed rows in its errors.jsonl "
             "[responses/ when no -o is given either]."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config (ollama-batch-cluster's or [[servers]]) [./config.toml when present and "
             "no --server or --local is given]."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL; repeat for several."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="NAME", help=API_KEY_ENV_HELP),
    rpm: Optional[int] = typer.Option(None, "--rpm", metavar="N", help=RPM_HELP),
    tpm: Optional[int] = typer.Option(None, "--tpm", metavar="N", help=TPM_HELP),
    local: bool = typer.Option(False, "--local", help="Run the embedded llama.cpp model (SmolLM2-135M)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default model (a line's model wins)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (or @file)."),
    fmt: str = typer.Option("auto", "--format", help="Input format: auto, jsonl or text."),
    json_mode: bool = typer.Option(False, "--json", help="Ask for a JSON answer."),
    schema: Optional[str] = typer.Option(None, "--schema", help="JSON Schema for the answer (inline or @file)."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
    extra_option: list[str] = typer.Option([], "--extra-option", metavar="NAME=VALUE",
        help="An option sent as it is, unchecked: one the server knows and corral does not (repeatable)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx", help="Context window in tokens (Ollama's num_ctx)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict",
                                             help="Most tokens per answer."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="Ollama: keep the model loaded, e.g. 30m."),
    endpoint: str = typer.Option("chat", "--endpoint", help="chat or generate (raw completion)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", help="Slots per server."),
    auto_tune: bool = typer.Option(
        False, "--auto-tune", help="Sweep each server's concurrency on the job's first rows (answers kept), "
        "then run at each server's knee."),
    gpu_monitor: Optional[bool] = typer.Option(
        None, "--gpu-monitor/--no-gpu-monitor",
        help="Sample nvidia-smi into the store and summarise it "
             "(default: sampled silently when nvidia-smi is on PATH)."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout",
        help="Seconds per request attempt, the same for all [default: from each request's expected "
             "tokens and the server's observed speed, 30-900 s; 120 s before a first answer]. A row "
             "gets 2 attempts that time out, then fails."),
    hedge: Optional[bool] = typer.Option(
        None, "--hedge/--no-hedge",
        help="Re-send an item a slow server holds to an idle faster one at the end of a job "
             "(first answer wins) [default: on, or the config's `hedge`]."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Tries per failing row [5]."),
    rate_limit_delay: float = typer.Option(0.0, "--rate-limit-delay",
        help="Seconds a slot waits before each request but the first (OllamaManager's rate_limit_delay)."),
    max_outage: float = typer.Option(
        300.0, "--max-outage", help="Seconds with no live server for a model before its rows fail."),
    max_busy_seconds: Optional[float] = typer.Option(
        None, "--max-busy-seconds",
        help="Seconds a row may spend on \"server busy\" answers (429/503, Retry-After waits included) "
             "before it fails [default: 300, or the config's `max_busy_seconds`]."),
    store_path: Optional[str] = typer.Option(None, "--store", help="SQLite journal [<output>.corral.db]."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-send rows that failed before."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Report and skip malformed lines."),
    progress: str = typer.Option("auto", "--progress", help="auto, bar, log or none."),
    reproduce: Optional[str] = typer.Option(
        None, "--reproduce", help="Re-run the job of a manifest (out.jsonl.manifest.json) into a fresh "
        "output and report models whose digest changed and answers that differ."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run table files (Parquet/CSV/JSONL) on Ray: local, auto, ray://HOST:10001 "
        "or HOST:PORT; -o is then a folder with one output per input file (see README, Scale out on Ray)."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", help="With --ray: worker actors."),
    text_column: str = typer.Option("text", "--text-column", help="With --ray: the column holding the text."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="With --ray: template with {text} (or @file)."),
    output_format: str = typer.Option("parquet", "--output-format", help="With --ray: parquet or jsonl."),
    column_prefix: str = typer.Option("", "--column-prefix", help="With --ray: put before every new column's "
                                      "name (llm_ gives llm_response), when the tables have such columns."),
    partition_rows: int = typer.Option(
        1_000_000, "--partition-rows", help="With --ray: cut bigger Parquet files into partitions of "
        "about this many rows, at row-group boundaries."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Run every prompt of INPUT on the servers; re-running the same command resumes.

    Results come out in input order; every answer is journaled in a SQLite store beside the
    output, so an interrupted run picks up where it stopped.

    \b
    Example:
      corral run prompts.jsonl -s http://127.0.0.1:11434 -m llama3.2 -o results.jsonl
      corral run prompts.jsonl --config cluster.toml -o results.jsonl --retry-failed
    """
    import shutil
    from contextlib import ExitStack

    from ..gpu import NO_GPU_NOTE, gpu_summary
    from ..jobs import default_store_path, open_sinks, run_prompt_file, scan_once
    from ..manifest import ManifestRecorder, manifest_path
    from ..progress import summary_table
    from ..reload import ConfigFile
    from ..reproduce import command_line, compare, prepare
    from ..settings import check_per_minute, check_seconds, check_slots, resolve
    from ..sources import Defaults, PromptFile
    from ..store import Store
    from ..terminal import visible
    from .common import load_schema, model_options, parse_option_pairs, read_text_arg, setup_logging

    setup_logging(verbose)
    if ray:
        from .ray_run import refuse, run_on_ray

        refuse({"--output-dir": output_dir, "--local": local, "--json": json_mode, "--store": store_path,
                "--retry-failed": retry_failed, "--reproduce": reproduce, "--skip-invalid": skip_invalid,
                "--endpoint": endpoint != "chat", "--format": fmt != "auto", "--auto-tune": auto_tune,
                "--gpu-monitor": gpu_monitor, "--hedge/--no-hedge": hedge is not None,
                "--extra-option": extra_option})
        options = model_options(option, temperature, seed, num_ctx, max_tokens)
        run_on_ray(input or ([prompts] if prompts else []), output, address=ray, config=config,
                   server=server, api=api, model=model, system=system, schema=schema,
                   options=options, text_column=text_column, prompt=prompt, workers=concurrency,
                   actors=ray_actors, output_format=output_format, timeout=timeout,
                   max_attempts=max_attempts, progress=progress, partition_rows=partition_rows,
                   column_prefix=column_prefix)
        return
    if (prompt or ray_actors or text_column != "text" or output_format != "parquet"
            or partition_rows != 1_000_000 or column_prefix):
        raise UsageError("--prompt, --text-column, --output-format, --partition-rows, --column-prefix and "
                         "--ray-actors go with --ray (for one table file on one machine: corral analyze)")
    if input and len(input) > 1:
        raise UsageError("one prompt file at a time (several table files only with --ray)")
    prompt_file: str | None = input[0] if input else None
    repro: Reproduction | None = None
    if reproduce:
        given = [flag for flag, value in (
            ("INPUT", prompt_file), ("--prompts", prompts), ("--model", model), ("--system", system),
            ("--schema", schema), ("--json", json_mode), ("--option", option), ("--temperature", temperature),
            ("--seed", seed), ("--num-ctx", num_ctx), ("--max-tokens", max_tokens),
            ("--keep-alive", keep_alive), ("--endpoint", endpoint != "chat"), ("--format", fmt != "auto"),
        ) if value]
        if given:
            raise UsageError(f"--reproduce takes the job from the manifest; drop {', '.join(given)}")
        repro = prepare(reproduce)
        print(f"corral: reproducing: {command_line(repro.manifest)}", file=sys.stderr)
        job, engine_cfg = repro.job, repro.engine
        prompt_file, fmt = str(repro.input_path), job.get("input_format", "auto")
        endpoint = job.get("endpoint", "chat")
        skip_invalid = skip_invalid or bool(job.get("skip_invalid"))
        if not (server or config or local):
            local = bool(job.get("local"))
        if not output and not output_dir:
            output = repro.default_output()
        timeout = timeout or engine_cfg.get("timeout")
        max_attempts = max_attempts or engine_cfg.get("max_attempts")
        concurrency = concurrency or engine_cfg.get("concurrency")
        rate_limit_delay = rate_limit_delay or engine_cfg.get("rate_limit_delay") or 0.0
        max_outage = engine_cfg.get("max_outage") or max_outage
        hedge = hedge if hedge is not None else engine_cfg.get("hedge")
        for message in repro.warnings:
            print(f"corral: warning: {message}", file=sys.stderr)
    path = prompt_file or prompts
    if not path:
        raise UsageError("no prompt file: corral run PROMPTS.jsonl -o results.jsonl")
    if prompt_file and prompts and prompt_file != prompts:
        raise UsageError("give the prompt file once: either INPUT or --prompts")
    if endpoint not in ("chat", "generate"):
        raise UsageError("--endpoint must be chat or generate")
    if api not in ("ollama", "openai"):
        raise UsageError("--api must be ollama or openai")
    if progress not in ("auto", "bar", "log", "none"):
        raise UsageError("--progress must be auto, bar, log or none")
    if json_mode and schema:
        raise UsageError("use --json or --schema, not both")
    output_dir, config = _batch_cluster_defaults(output, output_dir, config, bool(server or local or repro))
    check_slots(concurrency, "--concurrency")
    check_seconds(timeout, "--timeout")
    check_seconds(max_busy_seconds, "--max-busy-seconds")
    check_seconds(max_outage, "--max-outage")
    check_per_minute(rpm, "--rpm")
    check_per_minute(tpm, "--tpm")

    with ExitStack() as stack:
        resolved = resolve(
            servers=server or None, config=config, api=api, api_key_env=api_key_env, local=local, rpm=rpm, tpm=tpm,
            stack=stack, model=model,
            system=read_text_arg(system, "--system"),
            options=model_options(option, temperature, seed, num_ctx, max_tokens),
            extra_options=parse_option_pairs(extra_option, "--extra-option"),
            format=load_schema(schema) if schema else ("json" if json_mode else None),
            keep_alive=keep_alive, timeout=timeout, max_attempts=max_attempts, hedge=hedge,
            max_busy_seconds=max_busy_seconds)
        specs = resolved.servers
        defaults = Defaults(model=resolved.model, system=resolved.system, options=resolved.options,
                            format=resolved.format, keep_alive=resolved.keep_alive, endpoint=endpoint)
        if repro is not None:
            defaults, specs = _reproduced(repro, specs, resolved.local_model, bool(server or config or local))
        source = PromptFile(path, defaults, fmt=fmt, skip_invalid=skip_invalid)
        journal = store_path or default_store_path(output, output_dir)
        report, facts, scan_key, scanned = scan_once(source, journal)
        for problem in report.invalid:
            print(f"corral: skipping {problem}", file=sys.stderr)
        sinks = open_sinks(output, output_dir, report, stack, inputs=(path,))
        store = stack.enter_context(Store(journal))
        if scanned:
            store.save_scan(scan_key, report.to_json())
        settings = resolved.engine_settings(concurrency=concurrency, rate_limit_delay=rate_limit_delay,
                                       retry_failed=retry_failed, max_outage=max_outage)
        recorder = ManifestRecorder(
            kind="run", path=manifest_path(output, output_dir), argv=sys.argv,
            input={**facts, "rows": report.rows}, output={"path": output, "output_dir": output_dir},
            job={"input_format": source.fmt, "models": list(report.models), "model": defaults.model,
                 "system": defaults.system, "options": defaults.options, "format": defaults.format,
                 "keep_alive": defaults.keep_alive, "endpoint": defaults.endpoint,
                 "skip_invalid": skip_invalid, "local": local, "invalid_lines": len(report.invalid),
                 "reproduces": str(reproduce) if reproduce else None},
        )
        if gpu_monitor and not shutil.which("nvidia-smi"):
            print(NO_GPU_NOTE, file=sys.stderr)
        if auto_tune and concurrency:
            raise UsageError("--auto-tune finds the slots; --concurrency fixes them: give one")
        job = dict(sinks=sinks, progress=progress, argv=sys.argv, manifest=recorder,
                   gpu_monitor=gpu_monitor is not False,
                   reload=ConfigFile(config) if config and not (server or local or repro) else None)
        if auto_tune:  # `corral bench`'s machinery, imported only when asked for
            from ..bench.tune import tuned_run
        result = _run_interruptibly(
            tuned_run(source, servers=specs, store=store, settings=settings,
                      say=lambda line: print(f"corral: {line}", file=sys.stderr, flush=True), **job)
            if auto_tune else run_prompt_file(source, servers=specs, store=store, settings=settings, **job),
            store.path)
        gpu_rows = gpu_summary(store, store.run_id) if gpu_monitor else []
        comparison = compare(repro, recorder.data, store.path) if repro is not None else None
        if comparison is not None:
            recorder.update(reproduction={"manifest": str(reproduce), **comparison.as_dict()})

    stats = result.stats
    from rich.console import Console  # here, not above: it is drawn once the job is done

    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    for message in result.unreachable:
        err.print(f"[yellow]corral: skipped unreachable server {message}[/yellow]", highlight=False)
    if progress != "none" and result.engine is not None:
        err.print(summary_table(result.engine))
    if gpu_monitor and gpu_rows:
        from ..bench.output import gpu_table

        err.print(gpu_table(gpu_rows))
    where = " and ".join(x for x in (output, output_dir) if x)
    err.print(f"corral: {stats.ok} ok, {stats.failed} failed, {stats.cached} from the store; "
              f"results in {where}", highlight=False)
    if recorder.path is not None:
        err.print(f"corral: manifest in {recorder.path}", highlight=False)
    if comparison is not None:
        for line in comparison.lines() or ["nothing to compare: the original store is not here"]:
            err.print(f"corral: reproduce: {line}", highlight=False, markup=False)
    if result.failures:
        err.print(f"[red]corral: {stats.failed} row(s) failed:[/red]", highlight=False)
        for failure in result.failures[:20]:
            row_id = visible(failure.request.id, one_line=True)
            err.print(f"  line {failure.request.meta.get('line', '?')} (id {row_id}): "
                      f"{visible(failure.error, one_line=True)}", highlight=False, markup=False)
        if stats.failed > 20:
            err.print(f"  ... and {stats.failed - 20} more (see the error field in the output)")
        err.print("corral: re-run with --retry-failed to send them again", highlight=False)
        raise typer.Exit(1)


#: Where ollama-batch-cluster's client writes its per-prompt files when given no --output_dir.
DEFAULT_OUTPUT_DIR = "responses"
DEFAULT_CONFIG = "config.toml"


def _batch_cluster_defaults(output: str | None, output_dir: str | None, config: str | None,
                            servers_given: bool) -> tuple[str | None, str | None]:
    """ollama-batch-cluster's habits: ``./config.toml`` when no config or server is given, and
    per-prompt files in ``responses/`` when no output is. Each is said on stderr."""
    from pathlib import Path

    if config is None and not servers_given and Path(DEFAULT_CONFIG).is_file():
        config = DEFAULT_CONFIG
        print(f"corral: using ./{DEFAULT_CONFIG} (no --config given)", file=sys.stderr)
    if not output and not output_dir:
        output_dir = DEFAULT_OUTPUT_DIR
        print(f"corral: writing one file per prompt to {DEFAULT_OUTPUT_DIR}/ (no -o or --output-dir given)",
              file=sys.stderr)
    return output_dir, config


def _reproduced(repro: Reproduction, specs: list[ServerSpec], local_model: str | None,
                overridden: bool) -> tuple[Defaults, list[ServerSpec]]:
    """The manifest's prompt defaults, and its servers unless --server/--config/--local replace them."""
    from ..manifest import spec_from_dict
    from ..sources import Defaults

    job = repro.job
    model = job.get("model")
    if job.get("local") and local_model:
        model = local_model
    defaults = Defaults(model=model, system=job.get("system"), options=dict(job.get("options") or {}),
                        format=job.get("format"), keep_alive=job.get("keep_alive"),
                        endpoint=job.get("endpoint") or "chat")
    if overridden or job.get("local"):
        return defaults, specs
    recorded = [spec_from_dict(s["spec"]) for s in repro.manifest.get("servers") or [] if s.get("spec")]
    if not recorded:
        raise UsageError(f"{repro.manifest_path}: the manifest lists no servers; give --server URL")
    return defaults, recorded


def _run_interruptibly(coro, store_path: str):  # type: ignore[no-untyped-def]
    """Run the job; on Ctrl-C or SIGTERM stop cleanly: arrived results are journaled, exit 130."""
    import asyncio
    import signal

    from .. import runtime

    async def main():  # type: ignore[no-untyped-def]
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await coro

    try:
        return runtime.run(main())
    except asyncio.CancelledError:
        print(f"\ncorral: interrupted; finished results are kept in {store_path}: "
              "run the same command again to resume", file=sys.stderr)
        raise typer.Exit(130) from None
