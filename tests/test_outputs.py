"""Every output goes through corral.sinks.output: links followed, inputs never overwritten, FIFOs
streamed, one rule for what a failed job leaves, one writer per output. Through the CLI and the API."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.sinks import JsonlSink
from corral.sinks import output as output_module
from corral.sinks.output import AtomicOutput, is_stream, write_whole
from tests.conftest import ROOT, corral, read_jsonl, write_jsonl

BUSY = "another corral process is writing this output"


def _prompts(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"role": "user", "content": f"question {i}"} for i in range(n)])


def _table(path: Path, n: int) -> Path:
    path.write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(n)), encoding="utf-8")
    return path


def _run(server_url: str, prompts: str, output: str) -> tuple[str, ...]:
    return ("run", prompts, "--server", server_url, "-m", "llama3.2", "-o", output, "--progress", "none")


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.part"))


class FifoReader:
    """Reads a FIFO to its end in a thread (a writer blocks until a reader opens it)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.data = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fifo:
            self.data = fifo.read()

    def finish(self) -> bytes:
        """The bytes read; if no writer ever came, open the write end once so the reader ends."""
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            self._thread.join(timeout=30)
        return self.data


# ---- a symlinked -o writes the link's target ----------------------------------------------------

def test_symlinked_output_keeps_the_link_and_writes_its_target(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 5)
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "results.jsonl"
    target.write_text("previous\n")
    (tmp_path / "out.jsonl").symlink_to(target)
    proc = corral(*_run(fake_ollama.url, "p.jsonl", "out.jsonl"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.jsonl").is_symlink() and os.readlink(tmp_path / "out.jsonl") == str(target)
    assert [row["response"] for row in read_jsonl(target)] == [f"echo: question {i}" for i in range(5)]
    assert _parts(tmp_path) == []


def test_symlinked_table_output_through_the_api(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from corral.sinks.tables import TableWriter

    target = tmp_path / "target.csv"
    (tmp_path / "link.csv").symlink_to(target)
    with TableWriter(tmp_path / "link.csv") as writer:
        writer.write(pd.DataFrame({"a": ["1", "2"]}))
    assert (tmp_path / "link.csv").is_symlink()
    assert target.read_text() == "a\n1\n2\n"
    assert _parts(tmp_path) == []


# ---- -o equal to the input ------------------------------------------------------------------------

@pytest.mark.parametrize("command, alias", [
    ("run", "p.jsonl"), ("run", "alias.jsonl"), ("analyze", "t.csv"), ("analyze", "hard.csv"),
    ("embed", "p.jsonl"),
])
def test_output_equal_to_the_input_is_refused(tmp_path: Path, fake_ollama, command: str, alias: str) -> None:
    _prompts(tmp_path / "p.jsonl", 3)
    _table(tmp_path / "t.csv", 3)
    (tmp_path / "alias.jsonl").symlink_to(tmp_path / "p.jsonl")
    os.link(tmp_path / "t.csv", tmp_path / "hard.csv")
    source = "t.csv" if command == "analyze" else "p.jsonl"
    before = (tmp_path / source).read_bytes()
    args = {"run": _run(fake_ollama.url, source, alias),
            "analyze": ("analyze", source, "--text-column", "text", "-m", "llama3.2", "-o", alias,
                        "--server", fake_ollama.url, "--progress", "none"),
            "embed": ("embed", source, "--text-column", "content", "-m", "llama3.2", "-o", alias,
                      "--server", fake_ollama.url)}[command]
    proc = corral(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the output is the input file" in lines[0], proc.stderr
    assert (tmp_path / source).read_bytes() == before
    assert (tmp_path / "alias.jsonl").is_symlink()
    assert _parts(tmp_path) == [] and fake_ollama.requests == []


def test_check_happens_before_anything_is_written(tmp_path: Path) -> None:
    source = _prompts(tmp_path / "p.jsonl", 2)
    before = source.read_bytes()
    with pytest.raises(UsageError, match="the output is the input file"):
        JsonlSink(source, inputs=[source])
    assert source.read_bytes() == before and _parts(tmp_path) == []


# ---- FIFOs and devices are streamed in place ----------------------------------------------------

def test_fifo_output_streams_the_rows(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 12)
    reader = FifoReader(tmp_path / "out.jsonl")
    proc = corral(*_run(fake_ollama.url, "p.jsonl", "out.jsonl"), cwd=tmp_path)
    data = reader.finish()
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in data.splitlines()]
    assert [row["response"] for row in rows] == [f"echo: question {i}" for i in range(12)]
    assert stat.S_ISFIFO(os.stat(tmp_path / "out.jsonl").st_mode)  # still a FIFO, not a file
    assert _parts(tmp_path) == []


def test_fifo_table_output_streams_the_csv(tmp_path: Path, fake_ollama) -> None:
    pytest.importorskip("pandas")
    _table(tmp_path / "t.csv", 4)
    reader = FifoReader(tmp_path / "out.csv")
    proc = corral("analyze", "t.csv", "--text-column", "text", "-m", "llama3.2", "-o", "out.csv",
                  "--server", fake_ollama.url, "--progress", "none", cwd=tmp_path)
    text = reader.finish().decode()
    assert proc.returncode == 0, proc.stderr
    assert text.splitlines()[0].startswith("id,text,")
    assert len(text.splitlines()) == 5 and "echo: " in text
    assert stat.S_ISFIFO(os.stat(tmp_path / "out.csv").st_mode) and _parts(tmp_path) == []


def test_character_device_is_written_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in file that the stat check reports as a character device: no .part, no rename,
    no lock, appended to rather than replaced (never a real device in a test)."""
    device = tmp_path / "device"
    device.write_bytes(b"kept\n")
    real_mode: Callable[..., int | None] = output_module._file_mode
    monkeypatch.setattr(output_module, "_file_mode",
                        lambda path: stat.S_IFCHR | 0o666 if Path(path) == device else real_mode(path))
    out = AtomicOutput(device)
    assert out.in_place and out.part is None and out.path_for_writing == device
    second = AtomicOutput(device)                      # streams take no lock
    second.abort()
    with out.open("wb") as handle:
        handle.write(b"row\n")
    out.commit()
    assert device.read_bytes() == b"kept\nrow\n" and _parts(tmp_path) == []
    write_whole(device, "page\n")
    assert device.read_bytes() == b"kept\nrow\npage\n" and _parts(tmp_path) == []


def test_standard_streams_are_streams() -> None:
    assert is_stream("/dev/stdout") and is_stream("/dev/stderr") and is_stream("/dev/fd/1")
    assert not is_stream("results.jsonl")


# ---- one rule for an incomplete output ------------------------------------------------------------

def test_the_one_rule(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("previous\n")
    empty = AtomicOutput(target)
    empty.open("wb").close()
    empty.abort(rows=0)
    assert not (tmp_path / "out.jsonl.part").exists()       # nothing reached it: removed
    partial = AtomicOutput(target)
    with partial.open("wb") as handle:
        handle.write(b"row\n")
    partial.finish(False, rows=1)
    assert (tmp_path / "out.jsonl.part").read_bytes() == b"row\n"  # rows: kept for inspection
    assert target.read_text() == "previous\n"                       # never touched
    again = AtomicOutput(target)                                     # the next run replaces it
    with again.open("wb") as handle:
        handle.write(b"new\n")
    again.finish(True)
    again.finish(False)                                              # idempotent
    assert target.read_text() == "new\n" and _parts(tmp_path) == []


def test_failed_run_leaves_the_previous_output_and_no_part(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 3)
    (tmp_path / "out.jsonl").write_text("previous\n")
    proc = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "no-such-model", "-o", "out.jsonl",
                  cwd=tmp_path)
    assert proc.returncode == 2 and "not on any live server" in proc.stderr
    assert (tmp_path / "out.jsonl").read_text() == "previous\n" and _parts(tmp_path) == []


def test_interrupted_run_keeps_its_rows_in_the_part(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=1, latency=0.05)
    _prompts(tmp_path / "p.jsonl", 400)
    (tmp_path / "out.jsonl").write_text("previous\n")
    args = _run(server.url, "p.jsonl", "out.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    job = subprocess.Popen([sys.executable, "-m", "corral", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait_until(lambda s: s.completed >= 40, timeout=60)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 130, err
    assert (tmp_path / "out.jsonl").read_text() == "previous\n"
    kept = read_jsonl(tmp_path / "out.jsonl.part")
    assert 0 < len(kept) < 400
    assert [row["response"] for row in kept] == [f"echo: question {i}" for i in range(len(kept))]

    server.latency = 0.0
    done = corral(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 400 and _parts(tmp_path) == []


def test_table_writer_failing_before_any_row_leaves_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    from corral.sinks.tables import TableWriter

    (tmp_path / "out.parquet").write_text("previous complete output")
    with pytest.raises(RuntimeError):
        with TableWriter(tmp_path / "out.parquet"):
            raise RuntimeError("crash before the first chunk")
    assert (tmp_path / "out.parquet").read_text() == "previous complete output"
    assert _parts(tmp_path) == []


# ---- one writer per output ------------------------------------------------------------------------

def test_second_writer_of_a_jsonl_output_is_refused(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 3)
    first = JsonlSink(tmp_path / "out.jsonl")
    try:
        proc = corral(*_run(fake_ollama.url, "p.jsonl", "out.jsonl"), cwd=tmp_path)
    finally:
        first.close(complete=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and BUSY in lines[0], proc.stderr
    assert fake_ollama.requests == []


def test_second_writer_of_a_table_output_is_refused(tmp_path: Path, fake_ollama) -> None:
    pytest.importorskip("pandas")
    from corral.sinks.tables import TableWriter

    _table(tmp_path / "t.csv", 3)
    with TableWriter(tmp_path / "o.csv"):
        proc = corral("analyze", "t.csv", "--text-column", "text", "-m", "llama3.2", "-o", "o.csv",
                      "--server", fake_ollama.url, cwd=tmp_path)
    assert proc.returncode == 2 and BUSY in proc.stderr, proc.stderr
    assert fake_ollama.requests == []


def test_second_writer_through_a_link_is_refused(tmp_path: Path) -> None:
    """The lock is on the resolved output: a link and its target are one output."""
    target = tmp_path / "target.jsonl"
    (tmp_path / "link.jsonl").symlink_to(target)
    first = AtomicOutput(target)
    with pytest.raises(UsageError, match=BUSY):
        AtomicOutput(tmp_path / "link.jsonl")
    first.abort()
    assert _parts(tmp_path) == []


def test_merge_onto_its_own_results_is_refused(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "results.jsonl", [{"id": "1", "response": '{"a": 1}'}])
    before = results.read_bytes()
    proc = corral("merge", "results.jsonl", "-o", "results.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "the output is the input file" in proc.stderr, proc.stderr
    assert results.read_bytes() == before and _parts(tmp_path) == []
