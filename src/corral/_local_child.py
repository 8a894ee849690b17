"""Child process behind :class:`corral.local.LocalServer`.

Not a public API; run by ``corral.local`` as ``python -m corral._local_child``.
Two modes:

``--model PATH --port N ...``
    Run llama.cpp's HTTP server in this process through ``xllamacpp``
    (``pip install 'corral[local]'``).  ``xllamacpp.Server(params)`` loads the
    model, starts llama.cpp's own HTTP server thread and returns; deleting the
    object stops it.  We block until SIGTERM/SIGINT (or until our parent dies),
    then shut the server down and exit 0.

``--exec -- llama-server ARGS...``
    Supervise an external ``llama-server`` binary: start it with
    ``PR_SET_PDEATHSIG`` from *this* process's main thread, forward
    SIGTERM/SIGINT to it and exit with its exit code.

In both modes a watchdog thread polls ``os.getppid()``: when the process that
started us is gone (even SIGKILLed) we shut down, so a killed corral leaves no
orphaned server.  Polling complements ``PR_SET_PDEATHSIG`` set by the parent,
which fires when the parent's spawning *thread* exits, so it cannot be used
when corral starts the server from a worker thread.

Exit codes: 0 clean stop, 2 bad arguments / model failed to load / port in
use (see the log), 3 ``xllamacpp`` is not installed, 4 ``llama-server`` could
not be executed.  Everything is written to stdout/stderr, which the parent
points at a log file.

This module imports only the standard library at import time; ``xllamacpp``
is imported inside :func:`run_xllamacpp`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_NO_XLLAMACPP = 3
EXIT_EXEC_FAILED = 4

_PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 0.5
STOP_SECONDS = 3


def _log(msg: str) -> None:
    print(f"[corral-local-child {os.getpid()}] {msg}", file=sys.stderr, flush=True)


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent thread dies.

    No-op where prctl is unavailable (macOS, Windows); the getppid watchdog
    covers those.  Safe to call in a ``preexec_fn``.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # pragma: no cover - exotic libc
        pass


def _start_parent_watchdog(parent_pid: int | None, stop: threading.Event) -> None:
    """Set ``stop`` (and raise SIGTERM in ourselves) once our parent is gone."""
    if not parent_pid:
        return

    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent_pid:
                _log(f"parent {parent_pid} is gone; shutting down")
                stop.set()
                # Wake the main thread (it may be blocked in a native call).
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                except OSError:
                    pass
                return
            stop.wait(PARENT_POLL_SECONDS)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m corral._local_child")
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--exec", dest="exec_flag", action="store_true",
                   help="supervise the command line after `--exec --` instead of running xllamacpp")
    p.add_argument("--model")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--ctx-size", type=int, default=0, help="total context, split evenly between slots")
    p.add_argument("--alias", default=None)
    p.add_argument("--embedding", action="store_true")
    p.add_argument("--ubatch", type=int, default=None, help="physical batch (tokens); embeddings need "
                   "every input to fit one")
    p.add_argument("--threads", type=int, default=None)
    exec_argv = None
    if "--exec" in argv:  # everything after it is the supervised command
        i = argv.index("--exec")
        argv, exec_argv = argv[: i + 1], argv[i + 1:]
        if exec_argv[:1] == ["--"]:
            exec_argv = exec_argv[1:]
        if not exec_argv:
            p.error("--exec needs a command")
    args = p.parse_args(argv)
    args.exec_argv = exec_argv
    if exec_argv is None and not args.model:
        p.error("--model is required")
    return args


def run_xllamacpp(args: argparse.Namespace) -> int:
    # Default SIGTERM action (terminate) while loading: nothing to clean up yet.
    try:
        import xllamacpp as xlc
    except ImportError as exc:
        _log(f"xllamacpp is not installed ({exc}); install it with: pip install 'corral[local]'")
        return EXIT_NO_XLLAMACPP

    stop = threading.Event()
    _start_parent_watchdog(args.parent_pid, stop)

    params = xlc.CommonParams()
    params.model.path = args.model
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size  # 0 = from the model; llama.cpp splits it between slots
    params.port = args.port
    params.hostnames = [args.host]
    if args.alias:
        params.model_alias = {args.alias}
    params.endpoint_metrics = True
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.embedding:
        params.embedding = True
        params.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        # With one KV buffer per slot, texts embedded in the same batch on different slots come
        # back wrong (cosine 0.6-0.9 to the same text embedded alone; measured with n_parallel=2).
        # A unified KV cache gives every text its own vector, whatever else is in the batch.
        params.kv_unified = True
    if args.ubatch:
        params.n_batch = max(params.n_batch, args.ubatch)
        params.n_ubatch = args.ubatch

    _log(f"xllamacpp {getattr(xlc, '__version__', '?')}: loading {args.model} "
         f"(n_parallel={args.parallel}, n_ctx={args.ctx_size}, port={args.port})")
    try:
        server = xlc.Server(params)  # blocks until loaded and listening
    except Exception as exc:
        _log(f"llama.cpp server failed to start: {exc} (see the llama.cpp lines above)")
        return EXIT_FAILED
    _log(f"listening on {server.listening_address}")

    _stop_on_signals(stop)
    while not stop.is_set():
        stop.wait(1.0)
    _log("stopping")
    # ~Server stops llama.cpp's main loop, then joins its HTTP threads, holding the GIL. A handler
    # still waiting for a result (a client that did not hang up, e.g. a request queued for a slot
    # when our parent was killed) then waits for ever, and the server would outlive corral. So the
    # stop is bounded by an alarm whose default action ends the process, GIL or not.
    if hasattr(signal, "alarm"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(STOP_SECONDS)
    del server  # ~Server stops the HTTP server and joins its main loop
    _log("stopped")
    return EXIT_OK


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (from corral) and SIGINT (a terminal) both mean: stop the server and exit cleanly."""

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run_exec(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _start_parent_watchdog(args.parent_pid, stop)
    try:
        # Started from our main thread, which lives as long as we do, so
        # PDEATHSIG only fires when this supervisor dies.
        child = subprocess.Popen(args.exec_argv, preexec_fn=set_pdeathsig)
    except OSError as exc:
        _log(f"cannot run {args.exec_argv[0]!r}: {exc}")
        return EXIT_EXEC_FAILED
    _log(f"started {args.exec_argv[0]} as pid {child.pid}")

    _stop_on_signals(stop)
    while not stop.is_set():
        try:
            rc = child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
        _log(f"{args.exec_argv[0]} exited with {rc}")
        return rc if rc >= 0 else 128 - rc
    _log(f"stopping pid {child.pid}")
    child.terminate()
    try:
        child.wait(timeout=8)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.exec_argv is not None:
        return run_exec(args)
    return run_xllamacpp(args)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: native threads of llama.cpp are already
    # joined, nothing else needs finalising.
    os._exit(code)
