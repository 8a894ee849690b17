"""`corral gateway`: OpenAI's Files and Batches API over the fleet, for any tool that speaks it."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import UsageError
from . import app


@app.command("gateway")
def gateway_command(
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config with the fleet (ollama-batch-cluster's or [[servers]])."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL; repeat for several."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    local: bool = typer.Option(False, "--local", help="Serve the embedded llama.cpp model (SmolLM2-135M)."),
    host: str = typer.Option("127.0.0.1", "--host",
        help="Address to listen on; anything but loopback is reachable from other machines (warned)."),
    port: int = typer.Option(8600, "--port", help="Port to listen on (0: any free port, printed at start)."),
    state: str = typer.Option("corral-gateway", "--state",
        help="Folder for files, batches and the journal; start again on it to resume every batch."),
    api_key_env: Optional[str] = typer.Option(
        None, "--api-key-env", metavar="NAME",
        help="Environment variable holding the key every call must send as 'Authorization: Bearer "
             "<key>' (401 otherwise); the key is never logged or stored."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb",
        help="Largest upload in MB (10^6 bytes); bigger ones get a 413 [OpenAI's 200]."),
    read_ahead: Optional[int] = typer.Option(
        None, "--read-ahead",
        help="Rows of all batches in the engine at once, unfinished [4 per slot, at least 256]."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", help="Slots per server."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", help="Seconds per request attempt [derived per request, as corral run]."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Tries per failing row [5]."),
    hedge: Optional[bool] = typer.Option(
        None, "--hedge/--no-hedge", help="Re-send stragglers to idle faster servers [on, or the config's]."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Serve OpenAI's Files and Batches API on this fleet, with a live dashboard at /.

    Point any OpenAI client at it (base_url http://127.0.0.1:8600/v1): upload a JSONL of Batch
    requests, create a batch, poll it, download the output and error files. Batches share the fleet
    fairly (metadata {"priority": "N"} weighs one), run on corral's engine with its retries,
    failover and journal, and go on after a restart on the same --state.

    \b
    Example:
      corral gateway --config cluster.toml --state /var/lib/corral-gateway
      OPENAI_API_KEY=secret corral gateway -s http://gpu1:11434 --api-key-env OPENAI_API_KEY
    """
    import os
    from contextlib import ExitStack
    from pathlib import Path

    from ..gateway import GatewayOptions, serve
    from ..gateway.main import is_loopback
    from ..runtime import run
    from ..settings import resolve
    from .common import setup_logging

    setup_logging(verbose)
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    if max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be more than 0")
    if read_ahead is not None and read_ahead < 1:
        raise UsageError("--read-ahead must be at least 1")
    stack = ExitStack()
    settings = resolve(servers=server or None, config=config, api=api, timeout=timeout,
                       max_attempts=max_attempts, hedge=hedge, local=local, stack=stack)
    options = GatewayOptions(state=Path(state), max_upload_bytes=int(max_upload_mb * 1_000_000),
                             read_ahead=read_ahead, api_key=key)
    if not is_loopback(host):
        print(f"corral: warning: listening on {host}, reachable from other machines"
              + ("" if key else "; anyone who can reach it can use the fleet (set --api-key-env)"),
              file=sys.stderr)

    def ready(url: str) -> None:
        print(f"corral: gateway on {url}/v1 (dashboard {url}/), state in {state}", file=sys.stderr,
              flush=True)

    with stack:
        try:
            run(serve(settings.servers, settings.engine_settings(concurrency=concurrency), options,
                      host=host, port=port, ready=ready, argv=sys.argv))
        except KeyboardInterrupt:
            sys.exit(130)
