#!/usr/bin/env python3
"""How fast is corral's client side, and does its default concurrency pick a good value?

Prints figures; it is not a test. Three parts, each measured side by side in one run:

0. Start-up (always, unless --skip-startup): `corral --help` against `python -c "import aiohttp"`,
   whole process against whole process, interleaved, the median of --startup-runs each; the ratio
   says what a user waits for corral's command line beyond loading the HTTP library.

1. Overhead (always): nginx answers /api/chat with a canned Ollama reply, so the server costs
   ~nothing and the client is the bottleneck. The same N distinct prompts at the same concurrency C
   go through a bare aiohttp loop (plus the same loop on uvloop, as a reference, when uvloop is
   installed), ollama.AsyncClient, corral in-process (JSONL in, SQLite journal, JSONL out; the
   CLI's own code path, on corral.runtime's loop like the CLI) and the `corral run` CLI as a
   subprocess, against the bare loop as a subprocess too (a script that reads the same JSONL,
   runs the loop, writes one JSON line per answer): whole process against whole process.
   Each contender: one warm-up, then 3 rounds alternating A B C D ...; the median requests/s and
   client CPU per request are reported. --whole-process keeps only the two subprocesses.

2. Real server (--real): the embedded llama.cpp server (SmolLM2-135M via corral.local.LocalServer):
   corral with default settings (no -j: the in-flight count comes from llama.cpp's /props),
   measured before and after a hand-run sweep of -j 1 2 4 8 16.

Usage: .venv/bin/python benchmarks/throughput.py [--requests 5000] [--concurrency 64]
                                                 [--real] [--real-requests 120] [--rounds 3]
                                                 [--whole-process] [--startup-runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from corral.config import ServerSpec
from corral.engine import EngineSettings
from corral.jobs import open_sinks, run_prompt_file
from corral.sources import Defaults, PromptFile
from corral.store import Store

try:  # the CLI runs its job on corral.runtime.run (uvloop when installed); do the same
    from corral import runtime as _runtime

    corral_run = _runtime.run
    _loop_factory = _runtime.loop_factory()
    CORRAL_LOOP = "uvloop" if _loop_factory is not None else "asyncio"
except (ImportError, AttributeError):
    corral_run = asyncio.run
    _loop_factory = None
    CORRAL_LOOP = "asyncio"

MODEL = "llama3.2"            # what prompts ask for; the canned server lists llama3.2:latest
CANNED_MODEL = "llama3.2:latest"
REPO = Path(__file__).resolve().parent.parent
CORRAL_BIN = Path(sys.executable).with_name("corral")

# A realistic non-streaming Ollama /api/chat answer (no single quotes or '$': nginx string).
CANNED_CHAT = {
    "model": CANNED_MODEL,
    "created_at": "2025-01-15T10:21:37.472315Z",
    "message": {
        "role": "assistant",
        "content": ("The capital of France is Paris. It has been the political and "
                    "cultural centre for centuries, and it is home to landmarks such as the Eiffel "
                    "Tower, the Louvre and Notre-Dame cathedral."),
    },
    "done": True,
    "done_reason": "stop",
    "total_duration": 1532118208,
    "load_duration": 21584042,
    "prompt_eval_count": 31,
    "prompt_eval_duration": 112000000,
    "eval_count": 45,
    "eval_duration": 1396000000,
}
CANNED_TAGS = {"models": [{
    "name": CANNED_MODEL, "model": CANNED_MODEL, "modified_at": "2025-01-10T09:00:00.000000Z",
    "size": 2019393189,
    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
    "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
}]}
CANNED_VERSION = {"version": "0.5.7"}


# -- helpers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on port {port} within {timeout:g}s")


def nginx_string(obj: Any) -> str:
    text = orjson.dumps(obj).decode()
    assert "'" not in text and "$" not in text and "\\" not in text, "canned JSON must be nginx-safe"
    return text


def nginx_conf(prefix: Path, port: int, extra: str = "") -> str:
    """``extra``: more ``location`` blocks (other benchmarks add their canned answers)."""
    p = prefix
    return f"""
worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port};
        location = /api/chat {{
            default_type application/json;
            return 200 '{nginx_string(CANNED_CHAT)}';
        }}
        location = /api/tags {{
            default_type application/json;
            return 200 '{nginx_string(CANNED_TAGS)}';
        }}
        location = /api/version {{
            default_type application/json;
            return 200 '{nginx_string(CANNED_VERSION)}';
        }}
        {extra}
        location / {{ return 404; }}
    }}
}}
"""


class Nginx:
    """nginx as our own child process in a temp prefix; stop() terminates that pid only."""

    def __init__(self, binary: str, extra_locations: str = "") -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="corral-bench-nginx-"))
        try:
            os.chmod(self.dir, 0o755)  # when run as root the worker runs as nobody
            self.conf = self.dir / "nginx.conf"
            self.conf.write_text(nginx_conf(self.dir, self.port, extra_locations))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port, self.proc)
        except RuntimeError as exc:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"{exc}\n{err}") from None
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM to the master we started: fast shutdown, it takes its worker
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_prompts(path: Path, prompts: list[str]) -> None:
    with open(path, "wb") as f:
        for i, p in enumerate(prompts):
            f.write(orjson.dumps({"id": f"q{i}", "prompt": p}) + b"\n")


def check_output(path: Path, n: int) -> tuple[int, int]:
    """(rows, completion tokens) of a corral results file; raises unless n rows, all success."""
    rows = 0
    tokens = 0
    with open(path, "rb") as f:
        for line in f:
            row = orjson.loads(line)
            if not row.get("success"):
                raise AssertionError(f"{path}: row {row.get('id')} failed: {row.get('error')}")
            rows += 1
            tokens += row.get("eval_count") or 0
    if rows != n:
        raise AssertionError(f"{path}: {rows} rows, expected {n}")
    return rows, tokens


def _corral_compiled() -> bool:
    """Whether corral's modules have bytecode beside them: each start compiles them otherwise."""
    import importlib.util

    import corral.runner
    cached = importlib.util.cache_from_source(corral.runner.__file__)
    return os.path.exists(cached)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- contenders against nginx --------------------------------------------------------------------
async def _bare_loop(url: str, prompts: list[str], concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(prompt: str) -> dict[str, Any]:
            async with sem:
                payload = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                           "stream": False}
                async with session.post(url + "/api/chat", json=payload) as resp:
                    resp.raise_for_status()
                    return await resp.json()
        answers = await asyncio.gather(*(one(p) for p in prompts))
    assert len(answers) == len(prompts) and all(a["done"] for a in answers)
    return len(answers)


async def _ollama_client(url: str, prompts: list[str], concurrency: int) -> int:
    import ollama

    sem = asyncio.Semaphore(concurrency)
    client = ollama.AsyncClient(host=url)

    async def one(prompt: str) -> Any:
        async with sem:
            return await client.chat(model=MODEL, messages=[{"role": "user", "content": prompt}])

    try:
        answers = await asyncio.gather(*(one(p) for p in prompts))
    finally:
        close = getattr(client, "_client", None)
        if close is not None:
            await close.aclose()
    assert len(answers) == len(prompts) and all(a.message.content for a in answers)
    return len(answers)


def run_corral_inprocess(servers: list[ServerSpec], prompts_path: Path, workdir: Path,
                         concurrency: int | None, n: int, options: dict[str, Any] | None = None,
                         model: str = MODEL) -> tuple[float, float, int, int]:
    """The CLI's code path without the interpreter start: (seconds, CPU seconds, tokens, slots).

    ``tokens`` is the completion tokens of the output; ``slots`` the concurrency corral used.

    Fresh output and store each call, so nothing comes from the journal.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "results.jsonl"
    db = workdir / "results.jsonl.corral.db"
    for p in workdir.iterdir():
        p.unlink()
    c0 = time.process_time()
    t0 = time.perf_counter()
    with ExitStack() as stack:
        source = PromptFile(prompts_path, Defaults(model=model, options=dict(options or {})))
        report = source.scan()
        sinks = open_sinks(str(out), None, report, stack)
        store = stack.enter_context(Store(db))
        settings = EngineSettings(concurrency=concurrency)
        result = corral_run(run_prompt_file(source, servers=servers, store=store, settings=settings,
                                             sinks=sinks, progress="none", argv=["benchmark"]))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if result.stats.ok != n or result.stats.cached:
        raise AssertionError(f"corral: {result.stats.as_dict()}")
    _rows, tokens = check_output(out, n)
    slots = result.engine.total_slots if result.engine is not None else 0
    return seconds, cpu, tokens, slots


# The loop a user would write, as a program of its own: read the prompts, post them through one
# session under a semaphore, write one JSON line per answer. argv: URL PROMPTS OUTPUT CONCURRENCY.
BARE_LOOP_PROGRAM = f"""
import asyncio, json, sys
import aiohttp

async def main(url, prompts_path, output, concurrency):
    with open(prompts_path, encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(prompt):
            async with sem:
                payload = {{"model": {MODEL!r}, "messages": [{{"role": "user", "content": prompt}}],
                           "stream": False}}
                async with session.post(url + "/api/chat", json=payload) as resp:
                    resp.raise_for_status()
                    return await resp.json()
        answers = await asyncio.gather(*(one(p) for p in prompts))
    with open(output, "w", encoding="utf-8") as f:
        for prompt, answer in zip(prompts, answers):
            f.write(json.dumps({{"prompt": prompt, "response": answer["message"]["content"]}}) + "\\n")

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def run_child(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """A whole process: (wall seconds including interpreter start, its CPU seconds, the result)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), proc


def run_bare_process(url: str, prompts_path: Path, workdir: Path, concurrency: int,
                     n: int) -> tuple[float, float]:
    """The bare loop as its own process: (wall seconds including interpreter start, CPU seconds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "answers.jsonl"
    seconds, cpu, proc = run_child([sys.executable, "-c", BARE_LOOP_PROGRAM, url, str(prompts_path),
                                    str(out), str(concurrency)])
    if proc.returncode != 0:
        raise AssertionError(f"bare loop exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    rows = sum(1 for line in out.read_bytes().splitlines() if line.strip())
    if rows != n:
        raise AssertionError(f"bare loop wrote {rows} answers, expected {n}")
    return seconds, cpu


def run_corral_cli(url: str, prompts_path: Path, workdir: Path, concurrency: int,
                   n: int) -> tuple[float, float]:
    """`corral run` as a subprocess: (wall seconds including interpreter start, its CPU seconds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for p in workdir.iterdir():
        p.unlink()
    out = workdir / "results.jsonl"
    cmd = [str(CORRAL_BIN), "run", str(prompts_path), "-s", url, "-m", MODEL, "-j", str(concurrency),
           "-o", str(out), "--progress", "none"]
    seconds, cpu, proc = run_child(cmd)
    if proc.returncode != 0:
        raise AssertionError(f"corral run exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    check_output(out, n)
    return seconds, cpu


def overhead_benchmark(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float]]:
    nginx_bin = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx_bin is None:
        print("nginx is not installed; it serves the canned answers. Install it with:\n"
              "  sudo apt-get install nginx-light", file=sys.stderr)
        sys.exit(2)
    n, c = args.requests, args.concurrency
    prompts = [f"Question {i}: in one sentence, what is the capital of country number {i}?"
               for i in range(n)]
    prompts_path = tmp / "prompts.jsonl"
    write_prompts(prompts_path, prompts)

    print(f"\n== Client overhead: {n} requests, concurrency {c}, canned Ollama answers from nginx ==")
    nginx = Nginx(nginx_bin).start()
    try:
        url = nginx.url
        spec = [ServerSpec(url=url, api="ollama")]
        whole: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            (BARE_PROCESS, lambda: run_bare_process(url, prompts_path, tmp / "bare", c, n)),
            (CORRAL_PROCESS, lambda: run_corral_cli(url, prompts_path, tmp / "cli", c, n)),
        ]
        contenders: list[tuple[str, Callable[[], tuple[float, float]]]] = whole if args.whole_process else [
            ("bare aiohttp loop", lambda: _timed(lambda: asyncio.run(_bare_loop(url, prompts, c)))),
            *([("bare aiohttp loop on uvloop", lambda: _timed(lambda: _run_on(
                _loop_factory, _bare_loop(url, prompts, c))))] if _loop_factory is not None else []),
            ("ollama.AsyncClient", lambda: _timed(lambda: asyncio.run(_ollama_client(url, prompts, c)))),
            ("corral (in-process)",
             lambda: run_corral_inprocess(spec, prompts_path, tmp / "corral", c, n)[:2]),
            *whole,
        ]
        print(f"nginx {nginx_bin} on {url} (worker_processes 1); warm-up, then {args.rounds} "
              "alternating rounds", flush=True)
        print(f"corral runs on {CORRAL_LOOP} like the CLI; HTTP transport: "
              f"{os.environ.get('CORRAL_HTTP') or 'default'}; the bare loop and the ollama client "
              "on plain asyncio.run", flush=True)
        for _name, fn in contenders:
            fn()  # warm-up
        times: dict[str, list[float]] = {name: [] for name, _ in contenders}
        cpus: dict[str, list[float]] = {name: [] for name, _ in contenders}
        for r in range(args.rounds):
            for name, fn in contenders:
                wall, cpu = fn()
                times[name].append(wall)
                cpus[name].append(cpu)
            print(f"  round {r + 1}: " + ", ".join(f"{_short(name)} {n / times[name][-1]:,.0f}/s"
                                                   for name, _ in contenders), flush=True)
    finally:
        nginx.stop()

    rates = {name: [n / t for t in ts] for name, ts in times.items()}
    med = {name: statistics.median(v) for name, v in rates.items()}
    print()
    cpu_us = {name: statistics.median(v) / n * 1e6 for name, v in cpus.items()}
    print(f"{'contender':30} {'median req/s':>13} {'min':>8} {'max':>8} {'median s':>9} "
          f"{'client CPU us/req':>18}")
    print("-" * 91)
    for name in med:
        print(f"{name:30} {med[name]:13,.0f} {min(rates[name]):8,.0f} {max(rates[name]):8,.0f} "
              f"{statistics.median(times[name]):9.3f} {cpu_us[name]:18.0f}")
    print()
    print(f"corral run / bare loop, whole process against whole process = "
          f"{med[CORRAL_PROCESS] / med[BARE_PROCESS]:.2f}x  (throughput ratio of medians, interpreter "
          "start included on both sides; above 1 = corral faster)")
    print(f"client CPU per request, corral run / bare loop process = "
          f"{cpu_us[CORRAL_PROCESS] / cpu_us[BARE_PROCESS]:.2f}x  (lower is better; steadier on a busy machine)")
    if args.whole_process:
        return list(med.items())
    corral = med["corral (in-process)"]
    cli = med[CORRAL_PROCESS]
    print(f"corral / bare loop        = {corral / med['bare aiohttp loop']:.2f}x")
    if "bare aiohttp loop on uvloop" in med:
        print(f"corral / bare on uvloop   = {corral / med['bare aiohttp loop on uvloop']:.2f}x")
    print(f"corral / ollama client    = {corral / med['ollama.AsyncClient']:.2f}x")
    print(f"corral CLI / bare loop    = {cli / med['bare aiohttp loop']:.2f}x  (includes interpreter start)")
    print(f"client CPU per request, corral / bare = "
          f"{cpu_us['corral (in-process)'] / cpu_us['bare aiohttp loop']:.2f}x  (lower is better; "
          "steadier than wall time on a busy machine)")
    print("(every corral run checked: fresh journal, N result lines, all success)")
    return list(med.items())


BARE_PROCESS = "bare loop (own process)"
CORRAL_PROCESS = "corral run (CLI subprocess)"


def _short(name: str) -> str:
    return {"bare aiohttp loop": "bare", "bare aiohttp loop on uvloop": "bare/uvloop",
            "ollama.AsyncClient": "ollama", "corral (in-process)": "corral",
            BARE_PROCESS: "bare process", CORRAL_PROCESS: "corral run"}.get(name, name)


# -- start-up ------------------------------------------------------------------------------------
def startup_benchmark(args: argparse.Namespace) -> float:
    """`corral --help` against `python -c "import aiohttp"`, interleaved; returns the ratio of medians."""
    contenders = {
        "corral --help": [str(CORRAL_BIN), "--help"],
        'python -c "import aiohttp"': [sys.executable, "-c", "import aiohttp"],
        'python -c "pass"': [sys.executable, "-c", "pass"],
    }
    runs = args.startup_runs
    print(f"\n== Start-up: whole processes, interleaved, median of {runs} runs each ==", flush=True)
    for cmd in contenders.values():  # warm-up: the file cache, .pyc files
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, cmd in contenders.items():
            seconds, _cpu, proc = run_child(cmd)
            if proc.returncode != 0:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
            times[name].append(seconds)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{'process':30} {'median s':>9} {'min':>7} {'max':>7}")
    print("-" * 56)
    for name, ts in times.items():
        print(f"{name:30} {med[name]:9.3f} {min(ts):7.3f} {max(ts):7.3f}")
    ratio = med["corral --help"] / med['python -c "import aiohttp"']
    print(f"\ncorral --help / python -c \"import aiohttp\" = {ratio:.2f}x  (wall time, lower is better; "
          "the target is <= 1)", flush=True)
    return ratio


def _run_on(loop_factory: Any, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


# -- real llama.cpp server -----------------------------------------------------------------------
TOPICS = ["the sea", "a mountain", "bread", "the moon", "a library", "rain", "a bicycle", "coffee",
          "a forest", "winter", "a violin", "the desert", "a lighthouse", "honey", "a train", "snow"]


def real_benchmark(args: argparse.Namespace, tmp: Path) -> None:
    from corral.local import DEFAULT_N_PARALLEL, LocalServer

    n = args.real_requests
    sweep = [1, 2, 4, 8, 16]
    print(f"\n== Real server: embedded llama.cpp (SmolLM2-135M), {n} distinct prompts per point, "
          "max_tokens=48, temperature 0 ==")
    busy = os.getloadavg()[0]
    if busy > 0.75 * (os.cpu_count() or 1):
        print(f"WARNING: load average {busy:.1f} on {os.cpu_count()} cores before the server starts: "
              "other processes compete with llama.cpp, so these figures will be low and noisy",
              flush=True)
    server = LocalServer(n_parallel=DEFAULT_N_PARALLEL)
    t0 = time.perf_counter()
    server.start()
    print(f"LocalServer n_parallel={DEFAULT_N_PARALLEL} at {server.url} model {server.model!r} "
          f"(engine {server.resolved_engine}), ready in {time.perf_counter() - t0:.1f}s", flush=True)
    try:
        spec = [ServerSpec(url=server.url, api="openai")]  # no max_concurrency: slots from /props
        options = {"num_predict": 48, "temperature": 0}

        def point(tag: str, concurrency: int | None, count: int | None = None
                  ) -> tuple[float, float, int, int]:
            count = count or n
            # distinct prompts per point, so no point reuses another's prompt cache
            prompts = [f"Write one short sentence about {TOPICS[i % len(TOPICS)]} "
                       f"(variation {tag}-{i})." for i in range(count)]
            path = tmp / f"real-{tag}.jsonl"
            write_prompts(path, prompts)
            secs, _cpu, tokens, slots = run_corral_inprocess(
                spec, path, tmp / f"real-{tag}", concurrency, count, options=options,
                model=server.model)
            return count / secs, tokens / secs, tokens, slots

        w_rps, w_tps, _, _ = point("warm", 4, count=8)  # page the weights in, first-request costs
        print(f"  warm-up: 8 requests at -j 4: {w_rps:.2f} req/s, {w_tps:.1f} tok/s", flush=True)
        # -j 1 runs at roughly half the -j 4 rate: about 8.5 points' worth of -j 4 time in all
        projected = 8.5 * n / w_rps
        if projected > args.real_budget:
            n = max(8, int(n * args.real_budget / projected))
            print(f"  the sweep would take ~{projected / 60:.0f} min at this speed; "
                  f"cutting to {n} requests per point to stay near {args.real_budget / 60:.0f} min",
                  flush=True)
        results: list[tuple[str, float, float, int]] = []
        # default first and last (the mean is its figure), so drift in machine load hits both sides
        rps, tps, tok, slots = point("default-a", None)
        default_runs = [(rps, tps, tok)]
        print(f"  default: corral chose {slots} in flight from llama.cpp's /props: {rps:.2f} req/s",
              flush=True)
        for j in sweep:
            rps, tps, tok, _ = point(f"j{j}", j)
            results.append((f"corral -j {j}", rps, tps, tok))
            print(f"  -j {j}: {rps:.2f} req/s", flush=True)
        rps, tps, tok, _ = point("default-b", None)
        default_runs.append((rps, tps, tok))
        print(f"  default again: {rps:.2f} req/s", flush=True)
        results.insert(0, (f"default (-> {slots}), 2 runs", statistics.mean(r[0] for r in default_runs),
                           statistics.mean(r[1] for r in default_runs), sum(r[2] for r in default_runs)))
    finally:
        server.stop()

    print()
    print(f"{n} requests per point, max_tokens=48, LocalServer n_parallel={DEFAULT_N_PARALLEL}; "
          f"default = mean of a run before and after the sweep "
          f"({default_runs[0][0]:.2f} and {default_runs[1][0]:.2f} req/s)")
    print(f"{'run':26} {'req/s':>8} {'completion tok/s':>17} {'tokens':>8}")
    print("-" * 62)
    for name, rps, tps, tok in results:
        print(f"{name:26} {rps:8.2f} {tps:17.1f} {tok:8d}")
    best = max(results[1:], key=lambda r: r[1])
    print()
    print(f"best of the sweep: {best[0]} at {best[1]:.2f} req/s")
    print(f"default / best    = {results[0][1] / best[1]:.2f}x")


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000, help="requests per overhead run [5000]")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrency for every contender [64]")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up [3]")
    ap.add_argument("--real", action="store_true", help="also run the real llama.cpp benchmark")
    ap.add_argument("--real-requests", type=int, default=120, help="requests per real-server point [120]")
    ap.add_argument("--real-budget", type=float, default=600.0,
                    help="seconds the --real sweep may take; fewer requests per point if slower [600]")
    ap.add_argument("--skip-overhead", action="store_true", help="only the --real part")
    ap.add_argument("--whole-process", action="store_true",
                    help="overhead part: only the bare loop and `corral run`, each as its own process")
    ap.add_argument("--startup-runs", type=int, default=15, help="runs of each start-up contender [15]")
    ap.add_argument("--skip-startup", action="store_true", help="no start-up part")
    args = ap.parse_args()

    print("corral throughput benchmark")
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"date    : {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    print(f"machine : {platform.machine()} {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"versions: python {platform.python_version()}, aiohttp {version('aiohttp')}, "
          f"corral {version('corral')}, ollama {version('ollama')}, orjson {version('orjson')}, "
          f"httpx {version('httpx')}, uvloop {version('uvloop')}, httptools {version('httptools')}, "
          f"typer {version('typer')}")
    print(f"bytecode: corral's modules {'compiled' if _corral_compiled() else 'NOT compiled (run make install)'}"
          f"{', PYTHONDONTWRITEBYTECODE set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else ''}")

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_startup:
            startup_benchmark(args)
        if not args.skip_overhead:
            overhead_benchmark(args, tmp)
        if args.real:
            real_benchmark(args, tmp)


if __name__ == "__main__":
    main()
