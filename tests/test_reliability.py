"""Unit tests for the defects the fault suite (tests/test_faults.py) found, each at its own layer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corral
from corral import ServerSpec
from corral.backends import Reply
from corral.backends.base import BackendError
from corral.backends.ollama import JSON_NUM_PREDICT
from corral.backends.openai import OpenAIBackend
from corral.checks import json_answer_problem
from corral.config import load_config
from corral.engine import Engine, EngineSettings
from corral.errors import ConfigError, InputError, UsageError
from corral.locks import FileLock
from corral.requests import Request
from corral.sinks import JsonlSink
from corral.store import Store

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# ---- answers to JSON asks (corral.checks) -----------------------------------------------------

def _check(fmt, text, reason="stop", tokens=7):
    request = Request(index=0, id="1", model="m", format=fmt)
    return json_answer_problem(request, Reply(text=text, done_reason=reason, eval_count=tokens))


@pytest.mark.parametrize("fmt, text, reason, expected", [
    (None, "prose is fine when no JSON was asked", "stop", None),
    ({"type": "text"}, "prose", "stop", None),
    ("json", '{"a": 1}', "stop", None),
    ("json", '```json\n{"a": 1}\n```', "stop", None),
    ("json", "\n\n  \n", "length", "answer is only whitespace, not JSON (stopped at the token limit after 7 tokens)"),
    ("json", "", "stop", "answer is only whitespace, not JSON (empty answer)"),
    ("json", 'Sure: {"a": ', "length", "answer is not JSON (cut off at the token limit after 7 tokens)"),
    ("json", "I cannot do that.", "stop", "answer is not JSON"),
    ({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}, '{"a": 1}', "stop",
     "answer lacks required key(s) b"),
    ({"type": "object", "properties": {"a": {}}}, "[1, 2]", "stop", "answer is JSON but not an object (list)"),
    ({"type": "json_object"}, "[]", "stop", None),
    ({"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "array"}}}, "{}", "stop",
     "answer is JSON but not an array (dict)"),
])
def test_json_answer_problem(fmt, text, reason, expected) -> None:
    assert _check(fmt, text, reason) == expected


def test_json_asks_are_rechecked_and_bounded_on_ollama(fake_ollama_factory) -> None:
    server = fake_ollama_factory(
        responder=lambda body: "not json" if body.get("options", {}).get("seed") == 1 else '{"a": 1}')
    results = corral.batch_generate(["x"], model="llama3.2", servers=[server.url], format="json", seed=1)
    assert results[0]["success"] and results[0]["attempts"] == 2  # re-asked with another seed
    assert [body["options"]["num_predict"] for _, body in server.requests] == [JSON_NUM_PREDICT] * 2
    server.reset_stats()
    (ok,) = corral.batch_generate(["y"], model="llama3.2", servers=[server.url], format="json",
                                  num_predict=10)
    assert ok["success"] and server.requests[0][1]["options"]["num_predict"] == 10  # the user's wins
    server.reset_stats()
    (plain,) = corral.batch_generate(["z"], model="llama3.2", servers=[server.url])
    assert plain["success"] and "options" not in server.requests[0][1]  # plain text asks: untouched


def test_openai_servers_get_no_invented_max_tokens(fake_openai) -> None:
    corral.batch_generate(["x"], model="llama3.2", servers=[fake_openai.url], api="openai", format="json")
    assert "max_tokens" not in fake_openai.requests[0][1]  # vLLM rejects prompt + max_tokens > context


# ---- API keys in error text -------------------------------------------------------------------

def test_api_key_quoted_by_a_server_is_masked(monkeypatch) -> None:
    monkeypatch.setenv("K", "sk-secret-123")
    backend = OpenAIBackend(ServerSpec("http://127.0.0.1:1", api="openai", api_key_env="K"), None)  # type: ignore[arg-type]
    with pytest.raises(BackendError) as info:
        backend._decode("/v1/chat/completions", 401, b'{"error": {"message": "bad key sk-secret-123"}}', None)
    assert "sk-secret-123" not in str(info.value) and "bad key ***" in str(info.value)


# ---- config errors name the line ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('model = "m"\n\n  max_concurency = 3\n', "c.toml:3: unknown key(s) max_concurency"),
    ('[[servers]]\nurl = "http://a:1"\n[[servers]]\nurl = "http://b:2"\nmax_concurency = 2\n',
     "c.toml:5: servers[2]: unknown key(s) max_concurency"),
    ('[[servers]]\nname = "x"\nurl = "http://bad host"\n', "c.toml:3: servers[1]: bad server URL"),
    ('[ollama_instances]\n"gpu1:11434" = 0\n"bad host:1" = 1\n', "c.toml:3: ollama_instances: bad server URL"),
    ('timeout = -1\n', "c.toml:1: timeout must be a finite number of seconds > 0"),
    ('model = "m\n', "c.toml:1: invalid TOML: Illegal character"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml")
    assert str(info.value).startswith(str(tmp_path / expected)), str(info.value)


# ---- one writer per journal and per output ------------------------------------------------------

def test_a_store_is_locked_while_open(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with Store(db):
        assert (tmp_path / "j.db-lock").exists()  # beside the journal, not on it (SQLite's locks)
        with pytest.raises(UsageError, match="in use by another corral process"):
            Store(db)
        Store(db, lock=False).close()  # a reader that does not write may look
    assert not (tmp_path / "j.db-lock").exists()
    Store(db).close()                  # released with the first


def test_a_lock_file_removed_by_its_holder_is_never_shared(tmp_path: Path, monkeypatch) -> None:
    import corral.locks as locks

    path = tmp_path / "j.db-lock"
    first = FileLock(path, "busy", remove=True)
    real_open = os.open
    opened: list[int] = []

    def racing_open(*args, **kwargs):  # the holder finishes between our open and our flock
        fd = real_open(*args, **kwargs)
        if not opened:
            first.release()
        opened.append(fd)
        return fd

    monkeypatch.setattr(locks.os, "open", racing_open)
    second = FileLock(path, "busy", remove=True)
    monkeypatch.undo()
    assert second.held and len(opened) == 2  # the unlinked file was not kept: locked the new one
    with pytest.raises(UsageError, match="busy"):
        FileLock(path, "busy", remove=True)
    second.release()
    assert not path.exists()


def test_a_lock_dies_with_its_process(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl.part"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path[:0] = [sys.argv[2]]\n"
         "from corral.locks import FileLock\nFileLock(sys.argv[1], 'busy'); print('held', flush=True); "
         "time.sleep(60)", str(target), str(Path(corral.__file__).parent.parent)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="^busy$"):
            FileLock(target, "busy")
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
        lock = FileLock(target, "busy")
        assert lock.held
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdout.close()  # type: ignore[union-attr]


def test_second_writer_of_an_output_never_truncates_it(tmp_path: Path) -> None:
    first = JsonlSink(tmp_path / "out.jsonl")
    first._file.write(b"row\n")  # type: ignore[union-attr]
    first._file.flush()  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="another corral process is writing this output"):
        JsonlSink(tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl.part").read_bytes() == b"row\n"
    first.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b"row\n"


def test_output_that_cannot_be_renamed_is_a_clear_error(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out.jsonl")
    (tmp_path / "out.jsonl").mkdir()
    (tmp_path / "out.jsonl" / "x").write_text("someone made a folder here")
    with pytest.raises(UsageError, match="out.jsonl: writing the output failed"):
        sink.close()
    assert (tmp_path / "out.jsonl.part").exists()  # the results are not lost
    sink.close()                                     # idempotent


def test_table_output_on_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from corral.sinks.tables import TableWriter

    (tmp_path / "out.csv.part").symlink_to("/dev/full")
    writer = TableWriter(tmp_path / "out.csv")
    with pytest.raises(UsageError, match="writing the output failed: No space left on device"):
        writer.write(pd.DataFrame({"a": ["x" * 100_000]}))
        writer.close()


# ---- the engine stops when the journal cannot be written ----------------------------------------

class _FailingStore(Store):
    def __init__(self, after: int) -> None:
        super().__init__(None)
        self.after = after

    def flush(self) -> int:
        if len(self._pending) and self.after <= 0:
            raise UsageError("journal: cannot write to the store: disk I/O error")
        self.after -= len(self._pending)
        return super().flush()


def test_engine_stops_at_once_when_the_journal_fails(fake_ollama_factory, caplog) -> None:
    server = fake_ollama_factory(slots=2, latency=0.01)
    requests = (Request(index=0, id=str(i), model="llama3.2",
                        messages=[{"role": "user", "content": f"q{i}"}]) for i in range(10_000))

    async def run() -> None:
        # a small read-ahead window, so the producer is waiting for room when the journal fails
        async with Engine([ServerSpec(server.url)], _FailingStore(after=20), EngineSettings()) as engine:
            await engine.run(requests, lambda outcome: None, window=8)

    with pytest.raises(UsageError, match="disk I/O error"):
        asyncio.run(run())
    assert server.completed < 200  # it stopped, rather than answering the whole input
    import gc

    gc.collect()
    assert "never retrieved" not in caplog.text  # the error reached the caller, once


def test_missing_table_column_names_the_file(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    from corral.tables.stream import TableStream

    (tmp_path / "t.csv").write_text("id,body\n1,a\n")
    stream = TableStream(tmp_path / "t.csv", tmp_path / "o.csv", chunk_size=10)
    with pytest.raises(InputError) as info:
        stream.require_columns(["text"])
    stream.close(complete=False)
    assert str(info.value) == f"{tmp_path / 't.csv'}:1: no column 'text' (columns: id, body)"
    assert not (tmp_path / "o.csv.part").exists()


def test_utf16_prompt_file_is_named_as_such(tmp_path: Path) -> None:
    from corral.sources import Defaults, PromptFile

    (tmp_path / "p.jsonl").write_bytes('{"prompt": "a"}\n{"prompt": "b"}\n'.encode("utf-16"))
    with pytest.raises(InputError, match=r"p\.jsonl:1: file is UTF-16, not UTF-8"):
        PromptFile(tmp_path / "p.jsonl", Defaults(model="m")).scan()


def test_env_is_not_required_for_locks_on_exotic_filesystems(tmp_path: Path, monkeypatch) -> None:
    """A filesystem that refuses flock (ENOLCK) runs unlocked rather than not at all."""
    import errno

    import corral.locks as locks

    class NoLocks:
        LOCK_EX = LOCK_NB = 0

        @staticmethod
        def flock(fd: int, how: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks, "fcntl", NoLocks)
    lock = FileLock(tmp_path / "x", "busy")
    assert not lock.held
    lock.release()
    assert os.path.exists(tmp_path / "x")
