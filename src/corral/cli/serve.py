"""`corral serve`: one Ollama / llama.cpp server per GPU (or CPU share); `serve status`, `serve stop`.

A typer group whose callback starts the fleet when no sub-command is given (``invoke_without_command``),
so ``corral serve --gpus 4`` reads as ollama-batch-cluster's ``ollama-batch-servers.sh 4`` while
``status`` and ``stop`` stay sub-commands of the same noun. corral.serve and corral.cluster are
imported inside the commands, so building the command line stays light.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import UsageError
from . import app

if TYPE_CHECKING:
    from .. import serve

serve_app = typer.Typer(add_completion=False, rich_markup_mode=None,
                        short_help="Start a fleet of local inference servers.")
app.add_typer(serve_app, name="serve")

FIRST_PORT = 11432  # corral.serve.DEFAULT_BASE_PORT (a test keeps the two equal)

STATE_HELP = "Folder for the pid file and logs (default $CORRAL_STATE_DIR or ~/.corral/serve)."


def _state_dir(value: Optional[str]) -> Path:
    from .. import serve

    return Path(value).expanduser() if value else serve.default_state_dir()


def _err(message: str) -> None:
    print(f"corral: {message}", file=sys.stderr)


def _devices(gpus: Optional[str], cpu: Optional[int]) -> list[int | None]:
    from .. import serve

    if gpus and cpu:
        raise UsageError("give --gpus or --cpu, not both")
    if cpu is not None:
        if cpu < 1:
            raise UsageError("--cpu must be >= 1")
        return [None] * cpu
    if gpus:
        return list(serve.parse_gpus(gpus))
    found = serve.detect_gpus()
    if not found:
        raise UsageError("no GPU found (`nvidia-smi -L` is missing or lists none); "
                         "use --cpu N for N CPU-only servers, or --gpus 0,1 to name GPUs")
    return list(found)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@serve_app.callback(invoke_without_command=True)
def serve_command(
    ctx: typer.Context,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU count (4 = GPUs 0-3) or indices (0,2); "
                                       "default: every GPU `nvidia-smi -L` lists."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="N CPU-only servers instead of GPUs."),
    engine: str = typer.Option("ollama", "--engine", help="ollama or llama.cpp."),
    model: Optional[str] = typer.Option(None, "--model", help="llama.cpp: GGUF file (default the bundled "
                                        "SmolLM2); ollama: the model name written to the cluster file."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Requests each server runs at once "
                                           "(OLLAMA_NUM_PARALLEL / llama.cpp --parallel), written to the "
                                           "cluster file as max_concurrency."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp CPU threads per server "
                                          "(default with --cpu: cores / servers)."),
    port: int = typer.Option(FIRST_PORT, "--port", help="Port of the first server; the next "
                             "ones count up."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 lets other machines "
                             "in (no authentication!)."),
    advertise: Optional[str] = typer.Option(None, "--advertise", help="Host name written to the cluster "
                                            "file (default: this machine's name with --host 0.0.0.0)."),
    output: str = typer.Option("cluster.toml", "-o", "--output", help="Cluster file for `corral run --config`."),
    form: str = typer.Option("servers", "--form", help="Cluster file shape: servers ([[servers]]) or "
                             "instances (ollama-batch-cluster's [ollama_instances], Ollama only)."),
    pull: list[str] = typer.Option([], "--pull", metavar="MODEL", help="Pull this model on every Ollama server first "
                                   "(repeatable)."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="OLLAMA_KEEP_ALIVE, e.g. 24h."),
    max_loaded_models: Optional[int] = typer.Option(None, "--max-loaded-models",
                                                    help="OLLAMA_MAX_LOADED_MODELS."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Leave the servers running and return; "
                                "`corral serve stop` ends them."),
    restart: bool = typer.Option(True, "--restart/--no-restart", help="In the foreground, start a server "
                                 "that died again, after a back-off (1 s doubling to 60 s)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    startup_timeout: float = typer.Option(300.0, "--startup-timeout", help="Seconds each server may take "
                                          "to answer its health check."),
) -> None:
    """Start a fleet of local inference servers: one per GPU, each pinned with CUDA_VISIBLE_DEVICES
    on its own port, and write cluster.toml for `corral run --config`.

    In the foreground a server that dies is restarted (--no-restart: not) and Ctrl-C stops them all;
    with --detach use `corral serve status` / `corral serve stop`. A --pull that fails on every
    server stops the fleet and exits 1.

    \b
    Example:
      corral serve --gpus 4 --pull llama3.2 --detach
      corral serve --cpu 2 --engine llama.cpp -o cluster.toml
    """
    from .. import cluster, serve

    if ctx.invoked_subcommand is not None:
        return
    if engine not in serve.ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(serve.ENGINES)}, not {engine!r}")
    if form not in cluster.FORMS or (form == "instances" and engine != "ollama"):
        raise UsageError("--form must be servers, or instances (Ollama only)")
    if pull and engine != "ollama":
        raise UsageError("--pull is for --engine ollama (llama.cpp serves the GGUF given by --model)")
    devices = _devices(gpus, cpu)
    if engine == "llama.cpp" and threads is None and cpu:
        threads = max(1, (os.cpu_count() or 1) // len(devices))  # 2 servers on 2 cores: 1 thread each
    if not _loopback(host):
        _err(f"warning: binding {host}: {'Ollama' if engine == 'ollama' else 'llama.cpp'} has no "
             "authentication, anyone who reaches these ports can use the servers")
    options = serve.FleetOptions(
        engine=engine, gpus=devices, base_port=port, host=host,
        model=model if engine == "llama.cpp" else None, parallel=parallel, threads=threads,
        keep_alive=keep_alive, max_loaded_models=max_loaded_models, detach=detach,
        startup_timeout=startup_timeout)
    where = _state_dir(state_dir)
    _err(f"starting {len(devices)} {engine} server(s) on ports {port}-{port + len(devices) - 1} ...")
    began = time.monotonic()
    try:
        fleet = serve.start_fleet(options, where)
    except serve.FleetError as exc:
        raise UsageError(str(exc)) from None
    took = time.monotonic() - began
    for m in fleet.failed:
        _err(f"{m.name} (port {m.port}) failed to start: {m.error}")
    if not fleet.running:
        _err("no server started")
        raise typer.Exit(1)
    print(f"started {len(fleet.running)} {engine} server(s) in {took:.1f}s (state: {where})")
    for m in fleet.running:
        device = f"GPU {m.gpu}" if m.gpu is not None else "CPU"
        print(f"  {m.name:6} {m.url:24} {device:6} pid {m.pid:<8} log {Path(m.log).name}")
    model_name = _pull(fleet, pull) if pull else None
    _write_cluster(fleet, engine, model, model_name, host, advertise, output, form, parallel)
    if detach:
        print("detached: `corral serve status` shows them, `corral serve stop` ends them")
        raise typer.Exit(1 if fleet.failed else 0)
    _serve_until_interrupted(fleet, serve.Supervisor(fleet, options, restart=restart, say=_err))


def _pull(fleet: serve.Fleet, models: list[str]) -> str:
    """Pull each model on every server; one that no server could pull stops the fleet (a fleet
    without the model asked for is not the fleet asked for) and exits 1."""
    from .. import serve

    for name in models:
        began = time.monotonic()
        errors = serve.pull(fleet.running, name)
        failed = {k: v for k, v in errors.items() if v}
        for member, error in failed.items():
            _err(f"pull {name} on {member} failed: {error}")
        print(f"pulled {name} on {len(errors) - len(failed)}/{len(errors)} server(s) "
              f"in {time.monotonic() - began:.1f}s")
        if errors and len(failed) == len(errors):
            _err(f"{name} could not be pulled on any server; stopping the fleet")
            fleet.stop()
            raise typer.Exit(1)
    return models[0]


def _write_cluster(fleet: serve.Fleet, engine: str, model: Optional[str], pulled: Optional[str],
                   host: str, advertise: Optional[str], output: str, form: str,
                   parallel: Optional[int]) -> None:
    import socket

    from .. import cluster
    from ..config import ServerSpec

    public = advertise or cluster.advertised_host(host)
    specs = []
    name = None
    for m in fleet.running:
        if engine == "ollama":
            specs.append(ServerSpec(url=f"http://{public}:{m.port}", api="ollama", gpu=m.gpu,
                                    max_concurrency=parallel))
            name = model or pulled
        else:
            specs.append(ServerSpec(url=f"http://{public}:{m.port}", api="openai", gpu=m.gpu,
                                    models=(m.model,) if m.model else None, max_concurrency=parallel))
            name = m.model
    header = (f"Written by `corral serve` on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}.\n"
              "Use it with: corral run prompts.jsonl --config THIS_FILE -o out.jsonl")
    cluster.write(output, cluster.render(specs, model=name, form=form, header=header))
    print(f"wrote {output} ({len(specs)} server(s)): corral run PROMPTS.jsonl --config {output} -o out.jsonl")


def _serve_until_interrupted(fleet: serve.Fleet, supervisor: serve.Supervisor) -> None:
    """Wait for Ctrl-C / SIGTERM, restarting servers that die (unless --no-restart), then stop every
    child. `corral serve stop` from another shell ends the fleet and this command with it."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    print("serving; Ctrl-C stops every server", flush=True)
    try:
        while not done.wait(0.5):
            supervisor.tick()
            if supervisor.finished:  # e.g. `corral serve stop` from another shell
                _err("every server has exited")
                break
    finally:
        supervisor.close()
        _err("stopping every server ...")
        fleet.stop()
        _err("stopped")


@serve_app.command("status")
def status_command(state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP)) -> None:
    """Each server of the fleet: running (the very process started) and answering its health check.

    \b
    Example:
      corral serve status
      corral serve status --state-dir /tmp/fleet
    """
    from .. import serve

    where = _state_dir(state_dir)
    try:
        rows = serve.status(where)
    except serve.FleetError as exc:
        raise UsageError(str(exc)) from None
    if not rows:
        print(f"no fleet recorded in {where}")
        raise typer.Exit(1)
    print(f"{'NAME':6} {'URL':24} {'GPU':4} {'PID':8} STATE")
    for r in rows:
        state = ("running, healthy" if r["healthy"] else "running, not answering") if r["running"] \
            else "not running (exited or killed)"
        gpu = "-" if r["gpu"] is None else str(r["gpu"])
        print(f"{r['name']:6} {r['url']:24} {gpu:4} {r['pid'] or '-'!s:8} {state}")
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


@serve_app.command("stop")
def stop_command(state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
                 timeout: float = typer.Option(10.0, "--timeout", help="Seconds before SIGKILL.")) -> None:
    """End exactly the processes `corral serve` started (pid and start time checked first).

    \b
    Example:
      corral serve stop
      corral serve stop --timeout 30
    """
    from .. import serve

    where = _state_dir(state_dir)
    try:
        outcome = serve.stop(where, timeout)
    except serve.FleetError as exc:
        raise UsageError(str(exc)) from None
    if not outcome:
        print(f"no fleet recorded in {where}")
        return
    for member, what in outcome:
        print(f"{member.name} (pid {member.pid}): {what}")
    if any(serve.is_ours(member) for member, _ in outcome):
        raise typer.Exit(1)  # a process is still running: the fleet is not stopped
