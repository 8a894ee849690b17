"""`corral serve` / `serve status` / `serve stop` / `cluster merge`, through the CLI.

Ollama is a fake `ollama` executable on PATH: `ollama serve` records its environment (pinning, port,
OLLAMA_* settings) and then execs the fake Ollama server on the port OLLAMA_HOST names, so the pid
corral recorded is the server's. GPUs come from a fake `nvidia-smi -L`. The llama.cpp engine runs
for real on CPU (slow test).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from corral.config import load_config
from corral.local import free_port

from .conftest import ROOT, alive, corral, read_jsonl, write_jsonl
from .test_local import real_server

FAKE_OLLAMA = """#!{python}
import json, os, sys
if sys.argv[1:2] != ["serve"]:
    sys.exit("fake ollama: only `ollama serve`")
port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rsplit(":", 1)[1]
seen = {{k: v for k, v in os.environ.items() if k.startswith(("OLLAMA_", "CUDA_"))}}
with open(os.path.join({record!r}, port + ".json"), "w") as f:
    json.dump(seen, f)
if os.environ.get("FAKE_OLLAMA_EXIT"):
    print("Error: fake ollama could not start", flush=True)
    sys.exit(int(os.environ["FAKE_OLLAMA_EXIT"]))
os.environ["PYTHONPATH"] = {root!r}
os.execv(sys.executable, [sys.executable, "-m", "tests.fakes", "--api", "ollama", "--port", port,
                          "--models", "tinyllama", "--latency", os.environ.get("FAKE_OLLAMA_LATENCY", "0"),
                          "--record", os.path.join({record!r}, port + ".requests")])
"""

FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA L40S (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA L40S (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fleet_env(tmp_path: Path):
    """A bin folder with fake `ollama` and `nvidia-smi`, a state folder, and a stop at the end."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    _executable(bin_dir / "ollama", FAKE_OLLAMA.format(python=sys.executable, record=str(record),
                                                       root=str(ROOT)))
    _executable(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    state = tmp_path / "state"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CORRAL_STATE_DIR": str(state)}
    yield env, record, state
    corral("serve", "stop", env=env, cwd=tmp_path)  # never leave detached servers behind


def _base_port(count: int) -> int:
    """A port with ``count`` free ports from it on."""
    for _ in range(50):
        base = free_port()
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _members(state: Path) -> list[dict]:
    return json.loads((state / "fleet.json").read_text())["members"]


def _tags(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tags", timeout=5) as r:
        return [m["name"] for m in json.loads(r.read())["models"]]


def test_ollama_fleet_pinned_pulled_run_failover_and_stop(tmp_path: Path, fleet_env) -> None:
    env, record, state = fleet_env
    port = _base_port(2)
    done = corral("serve", "--detach", "--port", str(port), "--parallel", "3", "--keep-alive", "24h",
                  "--max-loaded-models", "1", "--pull", "llama3.2", "-o", "cluster.toml",
                  env={**env, "FAKE_OLLAMA_LATENCY": "0.3"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "started 2 ollama server(s)" in done.stdout and "pulled llama3.2 on 2/2" in done.stdout

    # One `ollama serve` per GPU nvidia-smi listed, each pinned and on its own port.
    seen = {p: json.loads((record / f"{p}.json").read_text()) for p in (port, port + 1)}
    for gpu, p in enumerate((port, port + 1)):
        assert seen[p] == {"CUDA_VISIBLE_DEVICES": str(gpu), "OLLAMA_HOST": f"127.0.0.1:{p}",
                           "OLLAMA_NUM_PARALLEL": "3", "OLLAMA_KEEP_ALIVE": "24h",
                           "OLLAMA_MAX_LOADED_MODELS": "1"}
        assert "llama3.2:latest" in _tags(p)  # pulled through /api/pull before the file was written

    config = load_config(tmp_path / "cluster.toml")
    assert config.model == "llama3.2"
    assert [(s.url, s.api, s.gpu) for s in config.servers] == [
        (f"http://127.0.0.1:{port}", "ollama", 0), (f"http://127.0.0.1:{port + 1}", "ollama", 1)]
    assert [s.max_concurrency for s in config.servers] == [3, 3]  # --parallel 3: what corral keeps in flight

    # A second fleet from the same state folder is refused while this one runs.
    again = corral("serve", "--detach", "--port", str(port + 10), env=env, cwd=tmp_path)
    assert again.returncode == 2 and "still running" in again.stderr

    # A run across the cluster; one server is killed mid-run: the rest fail over to the other.
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(40)])
    members = _members(state)
    run = subprocess.Popen([sys.executable, "-m", "corral", "run", str(prompts), "--config", "cluster.toml",
                            "-o", "out.jsonl"], cwd=tmp_path, env={**os.environ, **env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, received = tmp_path / "out.jsonl", record / f"{port + 1}.requests"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not received.exists() or len(received.read_text().splitlines()) < 6):
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before a server could be killed"
    os.kill(members[1]["pid"], signal.SIGKILL)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    rows = read_jsonl(out)
    assert len(rows) == 40 and not [r for r in rows if r.get("error")]
    # Both servers received work; what the killed one held in flight was retried on the other.
    assert len((record / f"{port}.requests").read_text().splitlines()) >= 6
    assert len(received.read_text().splitlines()) >= 6
    retried = [r for r in rows if r["attempts"] > 1]
    assert retried and all(r["server"] == f"127.0.0.1:{port}" for r in retried)

    status = corral("serve", "status", env=env, cwd=tmp_path)
    assert status.returncode == 1
    lines = status.stdout.splitlines()
    assert "gpu0" in lines[1] and "running, healthy" in lines[1]
    assert "gpu1" in lines[2] and "not running" in lines[2]

    stopped = corral("serve", "stop", env=env, cwd=tmp_path)
    assert "gpu0 (pid" in stopped.stdout and ": stopped" in stopped.stdout
    assert "gpu1" in stopped.stdout and "was not running" in stopped.stdout
    assert not alive(members[0]["pid"]) and not (state / "fleet.json").exists()
    assert "no fleet recorded" in corral("serve", "status", env=env, cwd=tmp_path).stdout


@pytest.mark.parametrize("how", ["ctrl-c", "serve stop"])
def test_foreground_stops_every_child(tmp_path: Path, fleet_env, how: str) -> None:
    """Ctrl-C ends the fleet and corral; `serve stop` from another shell too (corral then exits)."""
    env, record, state = fleet_env
    port = _base_port(2)
    proc = subprocess.Popen([sys.executable, "-m", "corral", "serve", "--cpu", "2", "--port", str(port),
                             "--form", "instances", "--advertise", "node7"], cwd=tmp_path, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving"):
                break
        pids = [m["pid"] for m in _members(state)]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert all(json.loads((record / f"{p}.json").read_text())["CUDA_VISIBLE_DEVICES"] == "-1"
                   for p in (port, port + 1))
        seed_form = (tmp_path / "cluster.toml").read_text()
        assert f'"node7:{port}" = 0' in seed_form and "[ollama_instances]" in seed_form
        assert len(load_config(tmp_path / "cluster.toml").servers) == 2
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does to corral (children have their own group)
        else:
            assert corral("serve", "stop", env=env, cwd=tmp_path).stdout.count(": stopped") == 2
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert ("stopped" if how == "ctrl-c" else "every server has exited") in err
    assert not any(alive(p) for p in pids)
    assert not (state / "fleet.json").exists()


@pytest.mark.parametrize("restart", [True, False])
def test_foreground_restarts_a_server_that_died(tmp_path: Path, fleet_env, restart: bool) -> None:
    """A foreground fleet for a day: a killed server is started again on its port (--no-restart: the
    fleet ends once every server has exited)."""
    env, record, state = fleet_env
    port = _base_port(1)
    proc = subprocess.Popen([sys.executable, "-m", "corral", "serve", "--cpu", "1", "--port", str(port),
                             *([] if restart else ["--no-restart"])], cwd=tmp_path, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving"):
                break
        (first,) = [m["pid"] for m in _members(state)]
        os.kill(first, signal.SIGKILL)
        if restart:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pids = [m["pid"] for m in _members(state)] if (state / "fleet.json").exists() else []
                if pids and pids[0] != first and alive(pids[0]):
                    break
                time.sleep(0.1)
            (second,) = [m["pid"] for m in _members(state)]
            assert second != first and _tags(port)  # the new server answers on the same port
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"cpu0 (pid {first}) exited with code -9" in err
    if restart:
        assert "restarting in 1s" in err and "cpu0 restarted (pid" in err and not alive(second)
    else:
        assert "every server has exited" in err and "restarting in" not in err


def test_a_pull_that_fails_on_every_server_exits_1(tmp_path: Path, fleet_env) -> None:
    env, record, state = fleet_env
    port = _base_port(2)
    done = corral("serve", "--cpu", "2", "--port", str(port), "--pull", "missing-model", "--detach",
                  env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "missing-model could not be pulled on any server; stopping the fleet" in done.stderr
    assert not (state / "fleet.json").exists() and not (tmp_path / "cluster.toml").exists()
    pids = [int(p) for p in re.findall(r" pid (\d+) ", done.stdout)]
    assert len(pids) == 2 and not any(alive(p) for p in pids)


def test_start_failures_are_reported(tmp_path: Path, fleet_env) -> None:
    env, record, state = fleet_env
    only_fakes = {**env, "PATH": str(Path(env["PATH"].split(os.pathsep)[0]))}

    # No GPU: a clear message pointing at --cpu.
    (Path(only_fakes["PATH"]) / "nvidia-smi").unlink()
    done = corral("serve", env=only_fakes, cwd=tmp_path)
    assert done.returncode == 2 and "no GPU found" in done.stderr and "--cpu N" in done.stderr

    # Port taken: that server is reported, the other one runs.
    port = _base_port(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen(1)
        done = corral("serve", "--cpu", "2", "--port", str(port), "--detach", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"cpu1 (port {port + 1}) failed to start: port {port + 1} is already in use" in done.stderr
    assert [m["name"] for m in _members(state)] == ["cpu0"]
    assert corral("serve", "stop", env=env, cwd=tmp_path).returncode == 0

    # The server exits at once: its exit code and last log lines.
    done = corral("serve", "--gpus", "1", "--port", str(port), "--detach",
                  env={**env, "FAKE_OLLAMA_EXIT": "3"}, cwd=tmp_path)
    assert done.returncode == 1
    assert "exited with code 3" in done.stderr and "fake ollama could not start" in done.stderr

    # No ollama binary at all.
    (Path(only_fakes["PATH"]) / "ollama").unlink()
    done = corral("serve", "--gpus", "0,1", "--port", str(port), env=only_fakes, cwd=tmp_path)
    assert done.returncode == 1 and "`ollama` executable is not on PATH" in done.stderr


def test_stop_never_signals_a_process_that_only_has_the_recorded_pid(tmp_path: Path) -> None:
    """A pid reused by another process (different start time) is left alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state = tmp_path / "state"
        state.mkdir()
        member = {"name": "gpu0", "engine": "ollama", "gpu": 0, "host": "127.0.0.1", "port": 1,
                  "log": str(state / "gpu0.log"), "pid": other.pid, "start_time": 1, "cmdline": ["ollama"]}
        (state / "fleet.json").write_text(json.dumps({"engine": "ollama", "members": [member]}))
        env = {"CORRAL_STATE_DIR": str(state)}
        assert "not running" in corral("serve", "status", env=env).stdout
        done = corral("serve", "stop", env=env)
        assert f"gpu0 (pid {other.pid}): was not running" in done.stdout
        assert other.poll() is None and not (state / "fleet.json").exists()
    finally:
        other.kill()
        other.wait()


def test_cluster_merge_of_two_machines(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('model = "llama3.2"\nsystem_message = "Be brief."\n'
                                     '[ollama_instances]\n"node1:11432" = 0\n"node1:11433" = 1\n')
    (tmp_path / "b.toml").write_text('model = "qwen2.5"\n[[servers]]\nurl = "http://node2:11432"\n'
                                     'gpu = 0\n[[servers]]\nurl = "http://node1:11433"\n')
    done = corral("cluster", "merge", "a.toml", "b.toml", "-o", "all.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "node1:11433 is in a.toml and b.toml; kept once" in done.stderr
    assert "model 'qwen2.5' differs" in done.stderr
    config = load_config(tmp_path / "all.toml")
    assert [(s.url, s.gpu) for s in config.servers] == [
        ("http://node1:11432", 0), ("http://node1:11433", 1), ("http://node2:11432", 0)]
    assert (config.model, config.system_message) == ("llama3.2", "Be brief.")
    seed = corral("cluster", "merge", "all.toml", "--form", "instances", cwd=tmp_path)
    assert '"node2:11432" = 0' in seed.stdout


@real_server
def test_llama_cpp_fleet_on_cpu_shares_a_run(tmp_path: Path) -> None:
    """Two real llama.cpp servers (SmolLM2, one thread each) and a run that reaches both."""
    state = tmp_path / "state"
    env = {"CORRAL_STATE_DIR": str(state)}
    port = _base_port(2)
    try:
        done = corral("serve", "--cpu", "2", "--engine", "llama.cpp", "--parallel", "2", "--port", str(port),
                      "--detach", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        config = load_config(tmp_path / "cluster.toml")
        assert config.model == "smollm2" and [s.api for s in config.servers] == ["openai", "openai"]
        assert all("--threads" in m["cmdline"] for m in _members(state))
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say the number {i}."} for i in range(8)])
        run = corral("run", str(prompts), "--config", "cluster.toml", "--max-tokens", "8", "-o", "out.jsonl",
                     env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        rows = read_jsonl(tmp_path / "out.jsonl")
        assert len(rows) == 8 and all(r.get("response") for r in rows)
        assert set(Counter(r["server"] for r in rows)) == {f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"}
        pids = [m["pid"] for m in _members(state)]
    finally:
        stopped = corral("serve", "stop", env=env, cwd=tmp_path)
    assert stopped.stdout.count(": stopped") == 2
    assert not any(alive(p) for p in pids)


def test_serve_never_writes_or_prints_a_key(tmp_path: Path, fleet_env) -> None:
    """Keys in the shell that starts a fleet (OPENAI_API_KEY, a config's api_key_env) reach no file
    `serve` writes (cluster file, state, server logs), no line it prints, and no run over the fleet."""
    from tests.scenarios_files import KEY, key_runs

    env, record, state = fleet_env
    env = {**env, "OPENAI_API_KEY": KEY, "CORRAL_TEST_KEY": KEY}
    port = _base_port(2)
    printed: list[str] = []
    for args in (["serve", "--cpu", "2", "--port", str(port), "--pull", "llama3.2", "--detach"],
                 ["serve", "status"]):
        done = corral(*args, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        printed += [done.stdout, done.stderr]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(6)])
    run = corral("run", str(prompts), "--config", "cluster.toml", "-o", "out.jsonl", "-vv", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    stop = corral("serve", "stop", env=env, cwd=tmp_path)
    printed += [run.stdout, run.stderr, stop.stdout, stop.stderr]
    # Ollama servers are sent no key: OPENAI_API_KEY is for OpenAI-compatible servers only.
    assert all("authorization" not in line.lower() for p in record.glob("*.requests")
               for line in p.read_text().splitlines())
    files = [p for p in tmp_path.rglob("*") if p.is_file() and record not in p.parents]
    assert any(p.suffix == ".log" for p in files) and (tmp_path / "cluster.toml") in files
    leaks = {str(p): key_runs(p.read_bytes()) for p in files}
    leaks.update({f"printed {i}": key_runs(text) for i, text in enumerate(printed)})
    assert not {name: n for name, n in leaks.items() if n}
