"""``corral serve``: a fleet of inference servers on this machine, one per GPU (or per CPU share).

Why: one Ollama process left four L40S GPUs ~25% busy each, while one ``ollama serve`` per GPU,
pinned with ``CUDA_VISIBLE_DEVICES`` and on its own port, kept them over 90% busy (as
ollama-batch-cluster measured). This module starts that fleet for Ollama or llama.cpp, waits until
every server answers its health endpoint, writes the cluster TOML that ``corral run --config``
reads, and records what it started in a state folder so ``corral serve status`` / ``stop``
(possibly from another shell) find exactly those processes again.

Process identity: a pid alone may be reused after its process ended, so the state file keeps each
child's pid *and* its start time (``/proc/<pid>/stat``, field 22). Nothing is signalled unless both
still match, so ``stop`` can never hit an unrelated process that inherited the pid.

llama.cpp servers go through :class:`corral.local.LocalServer` (a ``llama-server`` binary on PATH,
else the xllamacpp wheel), Ollama servers are ``ollama serve`` children handled here with the same
process hygiene (own process group; PDEATHSIG in the foreground, own session when detached).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import local, runtime
from .errors import UsageError
from .http import HttpClient, HttpError, default_client
from .sinks.output import write_whole
from .status import process_start_time

ENGINES = ("ollama", "llama.cpp")
DEFAULT_BASE_PORT = 11432  # ollama-batch-cluster's ollama-batch-servers.sh: 11432, 11433, ...
STATE_FILE = "fleet.json"
LOG_TAIL_LINES = 8
# CUDA_VISIBLE_DEVICES for CPU-only servers: an invalid id hides every GPU (Ollama's documented way
# to force CPU; "" would mean "all GPUs" to some tools).
NO_GPU = "-1"


class FleetError(RuntimeError):
    """A fleet could not be started, or its state folder is in use."""


def default_state_dir() -> Path:
    """``$CORRAL_STATE_DIR`` or ``~/.corral/serve``: where pid file and logs live."""
    env = os.environ.get("CORRAL_STATE_DIR")
    return Path(env) if env else Path.home() / ".corral" / "serve"


# ------------------------------------------------------------------------------------ devices


def detect_gpus() -> list[int]:
    """GPU indices from ``nvidia-smi -L`` ("GPU 0: NVIDIA L40S (UUID: ...)"); [] without it."""
    binary = shutil.which("nvidia-smi")
    if not binary:
        return []
    try:
        done = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.splitlines():
        head = line.split(":", 1)[0].split()
        if len(head) == 2 and head[0] == "GPU" and head[1].isdigit():
            gpus.append(int(head[1]))
    return gpus


def parse_gpus(spec: str) -> list[int]:
    """``--gpus 4`` is the first four GPUs (0-3), as ollama-batch-cluster's script; ``--gpus 0,2`` those indices."""
    text = spec.strip()
    try:
        if "," in text:
            indices = [int(part) for part in text.split(",") if part.strip()]
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            indices = list(range(count))
    except ValueError:
        raise UsageError(f"--gpus {spec!r}: expected a count (--gpus 4) or indices (--gpus 0,2)") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise UsageError(f"--gpus {spec!r}: indices must be distinct and >= 0")
    return indices


# ------------------------------------------------------------------------------------ plan


@dataclass
class FleetOptions:
    """What ``corral serve`` was asked for; one server per entry of ``gpus`` (None = a CPU server)."""

    engine: str = "ollama"
    gpus: list[int | None] = field(default_factory=list)
    base_port: int = DEFAULT_BASE_PORT
    host: str = "127.0.0.1"
    model: str | None = None            # llama.cpp: GGUF path (default the bundled SmolLM2)
    parallel: int | None = None         # OLLAMA_NUM_PARALLEL / llama.cpp --parallel
    threads: int | None = None          # llama.cpp --threads
    keep_alive: str | None = None       # OLLAMA_KEEP_ALIVE
    max_loaded_models: int | None = None  # OLLAMA_MAX_LOADED_MODELS
    detach: bool = False
    startup_timeout: float = 120.0


@dataclass
class Member:
    """One server of the fleet, as recorded in the state file."""

    name: str
    engine: str
    gpu: int | None
    host: str
    port: int
    log: str
    pid: int | None = None
    start_time: int | None = None
    cmdline: list[str] = field(default_factory=list)
    model: str | None = None
    error: str | None = None

    @property
    def url(self) -> str:
        """Where this machine reaches it (a wildcard bind is probed on the loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + ("/api/version" if self.engine == "ollama" else "/health")


def plan(options: FleetOptions, state_dir: Path) -> list[Member]:
    members = []
    for i, gpu in enumerate(options.gpus):
        name = f"gpu{gpu}" if gpu is not None else f"cpu{i}"
        members.append(Member(name=name, engine=options.engine, gpu=gpu, host=options.host,
                              port=options.base_port + i, log=str(state_dir / f"{name}.log")))
    return members


def ollama_env(member: Member, options: FleetOptions) -> dict[str, str]:
    """The environment that pins one ``ollama serve`` to its GPU and port."""
    env = {"CUDA_VISIBLE_DEVICES": NO_GPU if member.gpu is None else str(member.gpu),
           "OLLAMA_HOST": f"{member.host}:{member.port}"}
    if options.parallel:
        env["OLLAMA_NUM_PARALLEL"] = str(options.parallel)
    if options.keep_alive:
        env["OLLAMA_KEEP_ALIVE"] = options.keep_alive
    if options.max_loaded_models:
        env["OLLAMA_MAX_LOADED_MODELS"] = str(options.max_loaded_models)
    return env


# ------------------------------------------------------------------------------------ processes


def is_ours(member: Member) -> bool:
    """True while ``member.pid`` is still the very process we started (same start time)."""
    if not member.pid:
        return False
    started = process_start_time(member.pid)
    return started is not None and started == member.start_time


def port_in_use(host: str, port: int) -> bool:
    """True when a server listens on ``port`` (SO_REUSEADDR, as Go and llama.cpp servers bind, so
    the TIME_WAIT connections a just-stopped server leaves behind do not count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:  # 503 while llama.cpp loads its model
        exc.close()
    except (urllib.error.URLError, OSError):
        pass
    return False


def log_tail(path: str, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class OllamaProcess:
    """One ``ollama serve`` child, pinned through its environment."""

    def __init__(self, member: Member, options: FleetOptions, binary: str) -> None:
        self.member = member
        self.cmd = [binary, "serve"]
        self.pinning = ollama_env(member, options)
        self.env = {**os.environ, **self.pinning}
        self.detached = options.detach
        self.timeout = options.startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """From the main thread: PDEATHSIG fires when the spawning *thread* ends, not the process."""
        pdeathsig = not self.detached and threading.current_thread() is threading.main_thread()
        with open(self.member.log, "ab") as log:
            log.write(f"$ {' '.join(self.cmd)}  # {self.pinning}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                close_fds=True, preexec_fn=lambda: local._preexec(pdeathsig, new_session=self.detached))

    def wait(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while not healthy(self.member.health_url):
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise FleetError(f"exited with code {rc}; last log lines:\n{log_tail(self.member.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise FleetError(f"no answer on {self.member.health_url} after {self.timeout:.0f}s; "
                                 f"last log lines:\n{log_tail(self.member.log)}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else -1

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            local._terminate(proc, 10)


class LlamaProcess:
    """One llama.cpp server through :class:`~corral.local.LocalServer` (binary or xllamacpp)."""

    def __init__(self, member: Member, options: FleetOptions) -> None:
        self.member = member
        env = {"CUDA_VISIBLE_DEVICES": NO_GPU if member.gpu is None else str(member.gpu)}
        self.server = local.LocalServer(
            options.model, n_parallel=options.parallel or local.DEFAULT_N_PARALLEL, port=member.port,
            host=member.host, log_path=Path(member.log), threads=options.threads,
            startup_timeout=options.startup_timeout, extra_env=env, detached=options.detach)
        member.model = self.server.alias

    def spawn(self) -> None:
        """Nothing: LocalServer spawns and waits in one call, from a worker thread (safe there: the
        xllamacpp child polls our pid, a llama-server binary runs under corral's supervisor)."""

    def wait(self) -> None:
        try:
            self.server.start()
        except local.LocalServerError as exc:
            raise FleetError(str(exc)) from None

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def poll(self) -> int | None:
        proc = self.server._proc
        return proc.poll() if proc is not None else -1

    def stop(self) -> None:
        self.server.stop()


Process = OllamaProcess | LlamaProcess


# ------------------------------------------------------------------------------------ fleet


@dataclass
class Fleet:
    """The members of a fleet and, in the process that started them, their process handles."""

    members: list[Member]
    state_dir: Path
    engine: str
    detached: bool = False
    handles: dict[str, Process] = field(default_factory=dict)

    @property
    def running(self) -> list[Member]:
        return [m for m in self.members if m.error is None]

    @property
    def failed(self) -> list[Member]:
        return [m for m in self.members if m.error is not None]

    def save(self) -> None:
        data = {"engine": self.engine, "detached": self.detached, "corral_pid": os.getpid(),
                "members": [asdict(m) for m in self.running]}
        write_whole(self.state_dir / STATE_FILE, json.dumps(data, indent=2) + "\n")

    def stop(self) -> None:
        """Stop every child this process holds (foreground mode) and forget the state."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.handles))) as pool:
            list(pool.map(lambda h: h.stop(), self.handles.values()))
        self.handles.clear()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)


def load_members(state_dir: Path) -> list[Member] | None:
    """The members recorded in ``state_dir``, or None when no fleet was started there."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FleetError(f"{state_dir / STATE_FILE}: unreadable state file ({exc})") from None
    entries = data.get("members", []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
        raise FleetError(f"{state_dir / STATE_FILE}: damaged state file (no list of members); "
                         "stop the servers by their pids, then remove it")
    return [_member(m, state_dir / STATE_FILE) for m in entries]


_MEMBER_FIELDS = {f.name for f in fields(Member)}


def _member(entry: dict[str, Any], path: Path) -> Member:
    """A member from its state-file entry. Keys this version does not know (written by a newer or
    older corral) are ignored, so `serve status` and `serve stop` still work after an upgrade."""
    known = {k: v for k, v in entry.items() if k in _MEMBER_FIELDS}
    try:
        return Member(**known)
    except TypeError as exc:
        raise FleetError(f"{path}: damaged state file ({exc}); stop the servers by their pids, "
                         "then remove it") from None


def start_fleet(options: FleetOptions, state_dir: Path) -> Fleet:
    """Start one server per entry of ``options.gpus`` and wait until each answers its health check.

    Servers that fail are reported on their member (``error``: port taken, binary missing, exited
    with code N and the last log lines); the others keep running.
    """
    if options.engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {options.engine!r}")
    if not options.gpus:
        raise UsageError("no servers to start")
    state_dir.mkdir(parents=True, exist_ok=True)
    previous = load_members(state_dir)
    if previous and any(is_ours(m) for m in previous):
        raise FleetError(f"a fleet started from {state_dir} is still running: see `corral serve status`, "
                         "end it with `corral serve stop`, or use another --state-dir")
    members = plan(options, state_dir)
    fleet = Fleet(members, state_dir, options.engine, options.detach)
    binary = shutil.which("ollama") if options.engine == "ollama" else None
    for member in members:
        Path(member.log).unlink(missing_ok=True)
        if options.engine == "ollama" and not binary:
            member.error = "the `ollama` executable is not on PATH (https://ollama.com/download)"
        elif port_in_use(member.host, member.port):
            member.error = f"port {member.port} is already in use on {member.host}"
    todo = [m for m in members if m.error is None]

    spawned: list[tuple[Member, Process]] = []
    for member in todo:
        handle: Process
        try:
            if options.engine == "ollama":
                assert binary
                handle = OllamaProcess(member, options, binary)
            else:
                handle = LlamaProcess(member, options)
            handle.spawn()
        except (FleetError, local.LocalServerError, OSError) as exc:
            member.error = str(exc)
            continue
        spawned.append((member, handle))

    def wait(pair: tuple[Member, Process]) -> None:
        member, handle = pair
        try:
            handle.wait()
        except (FleetError, local.LocalServerError, OSError) as exc:
            member.error = str(exc)
            return
        member.pid = handle.pid
        member.start_time = process_start_time(member.pid) if member.pid else None
        member.cmdline = _cmdline(member.pid)
        fleet.handles[member.name] = handle

    # Started side by side: each waits for its own health check (model loading takes seconds).
    with ThreadPoolExecutor(max_workers=max(1, len(spawned))) as pool:
        list(pool.map(wait, spawned))
    if fleet.running:
        fleet.save()
    return fleet


def _cmdline(pid: int | None) -> list[str]:
    if not pid:
        return []
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pull(members: list[Member], model: str, timeout: float = 3600.0) -> dict[str, str | None]:
    """``POST /api/pull`` of ``model`` on every Ollama member at once; name -> error (None when ok).

    Called from the (synchronous) ``corral serve`` command, so it runs its own event loop, through
    the same HTTP client as every other request corral sends."""
    targets = [m for m in members if m.engine == "ollama"]
    return runtime.run(_pull_all(targets, model, timeout))


async def _pull_all(targets: list[Member], model: str, timeout: float) -> dict[str, str | None]:
    http = default_client()
    try:
        errors = await asyncio.gather(*(_pull_one(http, m.url, model, timeout) for m in targets))
    finally:
        await http.aclose()
    return dict(zip((m.name for m in targets), errors))


async def _pull_one(http: HttpClient, url: str, model: str, timeout: float) -> str | None:
    body = json.dumps({"model": model, "stream": False}).encode()
    try:
        answer = await http.request("POST", url + "/api/pull", body=body, timeout=timeout,
                                    headers={"Content-Type": "application/json"})
    except HttpError as exc:
        return str(exc)
    try:
        data = json.loads(answer.body or b"{}")
    except ValueError as exc:
        data = {} if answer.status >= 300 else {"error": f"invalid JSON answer: {exc}"}
    if not isinstance(data, dict):
        data = {"error": str(data)}
    if answer.status >= 300:
        return str(data.get("error") or f"HTTP {answer.status}")
    return None if data.get("status") == "success" else str(data.get("error") or data)


# ------------------------------------------------------------------------------------ status / stop


def status(state_dir: Path) -> list[dict[str, Any]]:
    """One row per recorded member: running (our pid, same start time) and healthy (answers)."""
    members = load_members(state_dir)
    if members is None:
        return []
    rows = []
    for m in members:
        alive = is_ours(m)
        rows.append({"name": m.name, "url": m.url, "gpu": m.gpu, "pid": m.pid, "running": alive,
                     "healthy": alive and healthy(m.health_url), "log": m.log})
    return rows


def stop(state_dir: Path, timeout: float = 10.0) -> list[tuple[Member, str]]:
    """SIGTERM each recorded process that is still ours (SIGKILL after ``timeout``), then forget them.

    Returns (member, what happened) pairs. Each child leads its own process group or session, so
    the group is signalled: a ``llama-server`` under corral's supervisor goes with it. "killed" is
    said only of a process seen gone after its SIGKILL; one still there after ``KILL_WAIT`` seconds
    (stuck in the kernel, or not ours to signal) is reported as still running, and the state file
    keeps it, so `serve status` and another `serve stop` still find it.
    """
    members = load_members(state_dir)
    if members is None:
        return []
    outcome: list[tuple[Member, str]] = []
    live = []
    for m in members:
        if is_ours(m):
            _signal(m, signal.SIGTERM)
            live.append(m)
        else:
            outcome.append((m, "was not running"))
    _wait_gone(live, timeout)
    killed = [m for m in live if is_ours(m)]
    for m in killed:
        _signal(m, signal.SIGKILL)
    _wait_gone(killed, KILL_WAIT)
    still = [m for m in killed if is_ours(m)]
    for m in live:
        if m in still:
            outcome.append((m, f"still running after SIGTERM and SIGKILL (pid {m.pid}): not stopped; "
                               f"end it as its owner, e.g. kill -9 {m.pid}"))
        elif m in killed:
            outcome.append((m, f"killed (did not stop within {timeout:.0f}s)"))
        else:
            outcome.append((m, "stopped"))
    if still:
        _keep_only(state_dir, still)
    else:
        (state_dir / STATE_FILE).unlink(missing_ok=True)
    return outcome


#: Seconds a process gets to disappear after SIGKILL before `stop` reports it as still running.
KILL_WAIT = 5.0


def _wait_gone(members: list[Member], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(is_ours(m) for m in members) and time.monotonic() < deadline:
        time.sleep(0.05)


def _keep_only(state_dir: Path, members: list[Member]) -> None:
    """Rewrite the state file with only ``members`` (those still running)."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data["members"] = [asdict(m) for m in members]
    write_whole(path, json.dumps(data, indent=2) + "\n")


def _signal(member: Member, sig: signal.Signals) -> None:
    assert member.pid
    try:
        os.killpg(member.pid, sig)  # our child leads its group (setpgid / setsid at start)
    except ProcessLookupError:
        return
    except PermissionError:
        try:
            os.kill(member.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # gone, or not ours to signal: `stop` then reports it still running


# ------------------------------------------------------------------------------------ restarts

RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 60.0
#: A server up this long after a restart counts as healthy again: its next death waits the first delay.
RESTART_STABLE_SECONDS = 120.0


def owns_state(state_dir: Path) -> bool:
    """Is the state file still this process's fleet? ``corral serve stop`` from another shell removes
    it: the foreground ``serve`` then stops restarting what it was asked to end."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("corral_pid") == os.getpid()


@dataclass
class _Watched:
    member: Member
    delay: float = RESTART_FIRST_DELAY
    restart_at: float | None = None      # monotonic time of the next start, while down
    up_since: float = field(default_factory=time.monotonic)
    starting: Any = None                 # (handle, future of its health wait) during a restart
    restarts: int = 0


class Supervisor:
    """Keeps a foreground fleet up for a day: a server that dies is started again on its port and
    GPU after a back-off (1 s, doubling to 60 s; back to 1 s once it stayed up 2 minutes).

    Driven by `tick` from the main thread (an Ollama child is spawned there, so the kernel's
    parent-death signal stays tied to corral); the health wait of a restart runs in a thread."""

    def __init__(self, fleet: Fleet, options: FleetOptions, *, restart: bool = True,
                 say: Any = print) -> None:
        self.fleet = fleet
        self.options = options
        self.restart = restart
        self.say = say
        self.watched = {m.name: _Watched(m) for m in fleet.running}
        self.gone: set[str] = set()      # died and will not be started again
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.watched)))
        self._binary = shutil.which("ollama") if options.engine == "ollama" else None

    @property
    def finished(self) -> bool:
        """Nothing runs and nothing will be started again."""
        return len(self.gone) == len(self.watched)

    def tick(self) -> None:
        now = time.monotonic()
        restarting = self.restart and owns_state(self.fleet.state_dir)
        for name, w in self.watched.items():
            if name in self.gone:
                continue
            if w.starting is not None:
                self._check_start(w, now)
                continue
            if w.restart_at is not None:
                if not restarting:
                    self.gone.add(name)
                elif now >= w.restart_at:
                    self._start(w)
                continue
            handle = self.fleet.handles.get(name)
            rc = handle.poll() if handle is not None else -1
            if rc is None:
                continue
            self.fleet.handles.pop(name, None)
            tail = log_tail(w.member.log)
            if not restarting:
                self.say(f"{name} (pid {w.member.pid}) exited with code {rc}; last log lines:\n{tail}")
                self.gone.add(name)
                continue
            if now - w.up_since >= RESTART_STABLE_SECONDS:
                w.delay = RESTART_FIRST_DELAY
            w.restart_at = now + w.delay
            self.say(f"{name} (pid {w.member.pid}) exited with code {rc}; restarting in {w.delay:.0f}s; "
                     f"last log lines:\n{tail}")
            w.delay = min(w.delay * 2, RESTART_MAX_DELAY)

    def _start(self, w: _Watched) -> None:
        w.restart_at = None
        handle: Process
        try:
            if self.options.engine == "ollama":
                if not self._binary:
                    raise FleetError("the `ollama` executable is not on PATH any more")
                handle = OllamaProcess(w.member, self.options, self._binary)
            else:
                handle = LlamaProcess(w.member, self.options)
            handle.spawn()
        except (FleetError, local.LocalServerError, OSError) as exc:
            self._failed_start(w, str(exc))
            return
        w.starting = (handle, self._pool.submit(handle.wait))

    def _check_start(self, w: _Watched, now: float) -> None:
        handle, future = w.starting
        if not future.done():
            return
        w.starting = None
        error = future.exception()
        if error is not None:
            self._failed_start(w, str(error))
            return
        m = w.member
        m.pid = handle.pid
        m.start_time = process_start_time(m.pid) if m.pid else None
        m.cmdline = _cmdline(m.pid)
        self.fleet.handles[m.name] = handle
        w.up_since, w.restarts = now, w.restarts + 1
        if owns_state(self.fleet.state_dir):
            self.fleet.save()
        self.say(f"{m.name} restarted (pid {m.pid}, restart {w.restarts})")

    def _failed_start(self, w: _Watched, error: str) -> None:
        w.restart_at = time.monotonic() + w.delay
        self.say(f"{w.member.name}: restart failed ({error}); next try in {w.delay:.0f}s")
        w.delay = min(w.delay * 2, RESTART_MAX_DELAY)

    def close(self) -> None:
        """Stop restarts under way (their servers are stopped with the fleet's)."""
        for w in self.watched.values():
            if w.starting is not None:
                handle, future = w.starting
                w.starting = None
                handle.stop()
                future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
