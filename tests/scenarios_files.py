"""Issue #17, part B: hostile files, keys, inputs and terminals, as fault scenarios.

Each function runs real `corral` processes against fake servers on 127.0.0.1, checks what must
hold and returns its figures, like ``tests/scenarios.py``: ``tests/test_files_hardening.py`` runs
them and asserts, ``benchmarks/faults.py`` prints them. Every figure is a count: cases tried,
cases handled with one clear line, and the things that must be 0 (tracebacks, hangs, files
replaced, input cells overwritten, key characters leaked).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import (
    exactly_once,
    journal_rows,
    read_jsonl,
    run_corral,
    start_corral,
    wait_for,
    write_prompts,
)
from tests.fakes import FakeServer

Figures = dict[str, Any]

KEY = "sk-corral-hardening-4f9c2a7be31d0e58QUOTED"
KEY_RUN = 8


class _Tally:
    """Counts for the issue's table, filled case by case."""

    def __init__(self) -> None:
        self.tried = 0
        self.one_line = 0
        self.tracebacks = 0
        self.hangs = 0
        self.replaced = 0
        self.overwritten = 0
        self.leaked = 0
        self.lines: list[str] = []

    def run(self, args: list[str], cwd: Path, *, expect: int | None = 2, fragment: str = "",
            timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """One case: the command's exit code, and (``expect=2``) its one `corral: error:` line."""
        self.tried += 1
        try:
            code, out, err, _ = run_corral(args, cwd, timeout=timeout, env=env)
        except AssertionError:
            self.hangs += 1
            raise
        if "Traceback" in err or "Traceback" in out:
            self.tracebacks += 1
            raise AssertionError(f"traceback from corral {' '.join(args)}:\n{err[-3000:]}")
        if expect is not None:
            assert code == expect, (args, code, err[-2000:])
        if expect == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("corral: error: "), (args, err)
            assert fragment in lines[0], (fragment, lines[0])
            self.one_line += 1
            self.lines.append(lines[0])
        return code, out, err

    def figures(self) -> Figures:
        return {"cases": self.tried, "one_line": self.one_line, "tracebacks": self.tracebacks,
                "hangs": self.hangs, "files_replaced": self.replaced,
                "cells_overwritten": self.overwritten, "key_chars_leaked": self.leaked,
                "errors": self.lines}


def _table(tally: _Tally) -> str:
    return (f"{tally.tried} cases, {tally.one_line} refused with one line; tracebacks "
            f"{tally.tracebacks}, hangs {tally.hangs}, files replaced {tally.replaced}, input cells "
            f"overwritten {tally.overwritten}, key characters leaked {tally.leaked}")


# ---- 3. never overwrite input columns -----------------------------------------------------------

def column_clash(work: Path) -> Figures:
    """Tables whose columns are named like the new ones (a JSON key ``label``, ``model``,
    ``response``, ``error``, fill's ``computed_City``, a fan-out's ``label_llama3.2``): refused
    before anything is sent, input and any earlier output untouched; ``--column-prefix`` runs."""
    tally = _Tally()
    gold = ["pos", "neg", "pos", "neu"]
    rows = [{"text": f"text {i}", "label": g, "prob": i / 10, "model": "human", "response": "r",
             "error": "none", "computed_City": "Paris", "label_llama3.2": g}
            for i, g in enumerate(gold)]
    import pandas as pd

    pd.DataFrame(rows).to_csv(work / "t.csv", index=False)
    before = (work / "t.csv").read_bytes()
    (work / "out.csv").write_text("an earlier output\n", encoding="utf-8")
    with FakeServer(slots=4) as server:
        base = ["--server", server.url, "-m", "llama3.2", "--progress", "none"]
        cases = [
            (["analyze", "t.csv", "-o", "out.csv", "--json-keys", "label,prob"], "'label', 'prob'"),
            (["analyze", "t.csv", "-o", "out.csv"], "'response'"),
            (["analyze", "t.csv", "-o", "out.csv", "--json-keys", "label", "--fanout"], "'label_llama3.2'"),
            (["analyze", "t.csv", "-o", "out.csv", "--json-keys", "model", "--column-prefix", "x_"],
             "'x_model'"),
            (["fill", "t.csv", "-o", "out.csv", "--fields", "City", "--text-column", "text"],
             "'computed_City'"),
        ]
        for args, fragment in cases:
            tally.run([*args, *base], work, fragment=fragment)
        assert not server.requests, "a refused job sent requests"
        # the way out: the same job with a prefix writes beside the user's columns
        tally.run(["analyze", "t.csv", "-o", "prefixed.csv", "--json-keys", "label,prob",
                   "--column-prefix", "llm_", *base], work, expect=0)
    if (work / "t.csv").read_bytes() != before or (work / "out.csv").read_text() != "an earlier output\n":
        tally.replaced += 1
    out = pd.read_csv(work / "prefixed.csv")
    tally.overwritten += int(sum(a != b for a, b in zip(out["label"], gold)))
    assert {"llm_response", "llm_label", "llm_prob", "llm_model", "llm_error"} <= set(out.columns)
    figures = tally.figures()
    assert figures["files_replaced"] == figures["cells_overwritten"] == 0, figures
    figures["setup"] = ("analyze/fill on a table with columns label, prob, model, response, error, "
                        "computed_City, label_llama3.2 (gold values)")
    figures["result"] = _table(tally) + "; --column-prefix llm_ keeps every gold label"
    return figures


# ---- 4. keys never leave --------------------------------------------------------------------------

def key_runs(text: bytes | str, key: str = KEY) -> int:
    """The longest run (>= KEY_RUN characters) of ``key`` found in ``text``, else 0."""
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    windows = {key[i:i + KEY_RUN] for i in range(len(key) - KEY_RUN + 1)}
    if not any(data[i:i + KEY_RUN] in windows for i in range(len(data) - KEY_RUN + 1)):
        return 0
    for length in range(len(key), KEY_RUN - 1, -1):
        if any(key[i:i + length] in data for i in range(len(key) - length + 1)):
            return length
    return 0


class _StreamQuoter(FakeServer):
    """An OpenAI-compatible fake whose streamed answers are one error event quoting the key, as a
    proxy does (the path `corral bench` reads)."""

    async def _h_openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return await super()._h_openai_chat(request)
        answer = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        event = {"error": {"message": f"Incorrect API key provided: {KEY[:-4]}****; {'x' * 600} {KEY}"}}
        await answer.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await answer.write_eof()
        return answer


_QUOTES = [f"Incorrect API key provided: {KEY}",
           f"Incorrect API key provided: {KEY[:-4]}****",
           f"quota exceeded for this organisation; {'details ' * 70}key {KEY}"]


def key_leaks(work: Path) -> Figures:
    """Every command that talks to a server (run, analyze, fill, embed, bench, report over the
    journal) against a server that quotes the key back in its errors (whole, with its end hidden,
    at the end of a 600-character message, in a streamed error), and URL credentials on the
    command line and in a config error: no file written and no line printed holds any run of 8+ of
    the key's characters."""
    tally = _Tally()
    env = {"CORRAL_TEST_KEY": KEY}
    printed: list[str] = []
    write_prompts(work / "p.jsonl", 30)
    import pandas as pd

    pd.DataFrame({"text": [f"t {i}" for i in range(12)]}).to_csv(work / "t.csv", index=False)
    models = ("llama3.2", "nomic-embed-text")
    with _StreamQuoter(api="openai", api_key=KEY, slots=4, models=models) as server, \
            FakeServer(slots=2) as open_server:
        (work / "c.toml").write_text(
            f'model = "llama3.2"\n[[servers]]\nurl = "{server.url}"\napi = "openai"\n'
            'api_key_env = "CORRAL_TEST_KEY"\n', encoding="utf-8")
        config = ["-c", "c.toml", "--progress", "none"]
        commands: list[tuple[list[str], int | None]] = [
            (["run", "p.jsonl", "-o", "out.jsonl", "--output-dir", "answers", "-vv", *config], 1),
            (["analyze", "t.csv", "-o", "a.csv", "-m", "llama3.2", "-v", *config], 1),
            (["fill", "t.csv", "-o", "f.csv", "--fields", "City", "--text-column", "text", "-m",
              "llama3.2", *config], 1),
            (["embed", "t.csv", "-o", "e.parquet", "-m", "nomic-embed-text", "-c", "c.toml"], None),
            (["bench", "-m", "llama3.2", "-n", "1", "-c", "c.toml", "--csv", "b.csv", "--json",
              "b.json", "--report", "b.html"], None),
        ]
        for i, (args, expect) in enumerate(commands):
            server.fail_message = _QUOTES[i % len(_QUOTES)]
            server.fail_next(3, status=400)
            _, out, err = tally.run(args, work, expect=expect, env=env)
            printed += [out, err]
        for source in ("out.jsonl", "a.csv"):
            _, out, err = tally.run(["report", source], work, expect=0, env=env)
            printed += [out, err]
        # credentials in a server URL: hidden in the manifest, the journal and the report
        url = open_server.url.replace("http://", f"http://alice:{KEY}@") + f"/?api_key={KEY}"
        _, out, err = tally.run(["run", "p.jsonl", "-o", "u.jsonl", "-s", url, "-m", "llama3.2",
                                 "--progress", "none"], work, expect=0)
        printed += [out, err]
        _, out, err = tally.run(["report", "u.jsonl"], work, expect=0)
        printed += [out, err]
        (work / "bad.toml").write_text(f'[[servers]]\nurl = "http://alice:{KEY}@bad host:1"\n',
                                       encoding="utf-8")
        _, out, err = tally.run(["run", "p.jsonl", "-o", "x.jsonl", "-c", "bad.toml", "-m", "llama3.2"], work,
                                fragment="bad server URL")
        printed += [out, err]
        assert server.requests, "the key never reached the server"
    (work / "bad.toml").unlink()  # the one file holding the key: ours, not corral's
    files = [p for p in work.rglob("*") if p.is_file()]
    runs = {str(p.relative_to(work)): key_runs(p.read_bytes()) for p in files}
    runs.update({f"printed {i}": key_runs(text) for i, text in enumerate(printed)})
    leaks = {name: n for name, n in runs.items() if n}
    tally.leaked = sum(leaks.values())
    figures = tally.figures()
    figures["files_scanned"] = len(files)
    assert not leaks, leaks
    figures["setup"] = ("run -vv, analyze, fill, embed, bench (CSV/JSON/HTML), report x3, a URL "
                        "with user:KEY@ and ?api_key=KEY, a config error: the server quotes the key "
                        "whole, with its end hidden, after 600 characters, in a streamed error")
    figures["result"] = (f"{_table(tally)}; {len(files)} files and {len(printed)} outputs "
                         "grepped for any 8+ character run of the key")
    return figures


# ---- 5. malformed lines: one line, exit 2, nothing half-written --------------------------------

def _batch(body: Any, url: Any = "/v1/chat/completions", custom_id: Any = "a") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


_HI = [{"role": "user", "content": "hi"}]
BAD_LINES: list[tuple[str, Any, str]] = [
    ("body.messages [\"hi\"]", _batch({"model": "m", "messages": ["hi"]}), "body.messages must be"),
    ("body.messages [5]", _batch({"model": "m", "messages": [5]}), "body.messages must be"),
    ("body.messages content 5", _batch({"model": "m", "messages": [{"role": "user", "content": 5}]}),
     "body.messages item 1: content must be a string"),
    ("body.model 5", _batch({"model": 5, "messages": _HI}), "body.model must be a model name"),
    ("body.model [\"a\"]", _batch({"model": ["a"], "messages": _HI}), "body.model must be"),
    ("url a list", _batch({"model": "m", "messages": _HI}, url=["/v1/chat/completions"]),
     "unsupported url a list"),
    ("url an object", _batch({"model": "m", "messages": _HI}, url={"a": 1}), "unsupported url an object"),
    ("embeddings input 5", _batch({"model": "m", "input": 5}, url="/v1/embeddings"), "body.input must be"),
    ("embeddings input null", _batch({"model": "m", "input": None}, url="/v1/embeddings"),
     "body.input must be"),
    ("embeddings input [1,2,3]", _batch({"model": "m", "input": [1, 2, 3]}, url="/v1/embeddings"),
     "body.input must be"),
    ("completions prompt null", _batch({"model": "m", "prompt": None}, url="/v1/completions"),
     "body.prompt must be a string, not null"),
    ("custom_id null", _batch({"model": "m", "messages": _HI}, custom_id=None), "custom_id must be"),
    ("\"prompt\": null", {"prompt": None}, "prompt must be a string, not null"),
    ("\"system\": 5", {"prompt": "x", "system": 5}, "system must be a string"),
    ("\"id\": [1]", {"prompt": "x", "id": [1]}, "id must be a string or a number"),
]


def bad_lines(work: Path) -> Figures:
    """Each malformed line as line 2 of a prompt file: exit 2 with one line naming file:line,
    nothing sent, and no journal, manifest or output created."""
    tally = _Tally()
    with FakeServer(slots=2) as server:
        for i, (_, line, fragment) in enumerate(BAD_LINES):
            folder = work / f"case{i}"
            folder.mkdir()
            first = _batch({"model": "llama3.2", "messages": _HI}, custom_id="ok") \
                if "custom_id" in line else {"prompt": "fine"}
            (folder / "p.jsonl").write_bytes(orjson.dumps(first) + b"\n" + orjson.dumps(line) + b"\n")
            tally.run(["run", "p.jsonl", "-o", "out.jsonl", "-s", server.url, "-m", "llama3.2",
                       "--progress", "none"], folder, fragment=f"p.jsonl:2: {fragment}")
            left = sorted(p.name for p in folder.iterdir() if p.name != "p.jsonl")
            tally.replaced += len(left)  # anything written at all is half-written here
            assert not left, left
        assert not server.requests
    figures = tally.figures()
    figures["setup"] = f"{len(BAD_LINES)} malformed prompt lines (OpenAI Batch bodies, embeddings inputs, nulls)"
    figures["result"] = _table(tally) + "; nothing sent, no journal or manifest created"
    return figures


# ---- 7. damaged files ----------------------------------------------------------------------------

def _damage(db: Path) -> None:
    """Garbage over pages in the middle of a journal (the first page, SQLite's header and table
    list, is left alone: then the damage is met mid-run, not at open)."""
    size = db.stat().st_size
    with open(db, "r+b") as handle:
        for offset in range(size // 3 // 4096 * 4096, 2 * size // 3, 4096 * 3):
            handle.seek(offset)
            handle.write(os.urandom(4096))


def damaged_files(work: Path, rows: int = 600) -> Figures:
    """A journal with garbage in the middle (run and report name it and say how to go on; `corral
    salvage` copies the readable rows, the re-run sends only the lost ones); a serve state file
    with an unknown key (status and stop still work); a TOML config with a BOM (read); UTF-32
    files (called UTF-32)."""
    tally = _Tally()
    write_prompts(work / "p.jsonl", rows, long={i: f"prompt {i} " + "padding " * 60 for i in range(rows)})
    with FakeServer(slots=8) as server:
        args = ["run", "p.jsonl", "-o", "out.jsonl", "-s", server.url, "-m", "llama3.2", "--progress", "none"]
        tally.run(args, work, expect=0)
        db = work / "out.jsonl.corral.db"
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        _damage(db)
        (work / "out.jsonl").unlink()
        tally.run(args, work, fragment="out.jsonl.corral.db: the journal is damaged")
        tally.run(["report", "out.jsonl.corral.db"], work, fragment="the journal is damaged")
        _, _, err = tally.run(["salvage", str(db), "saved.db"], work, expect=0)
        kept = journal_rows(work / "saved.db")
        salvage_line = err.strip()
        assert 0 < kept < rows, (kept, err)
        server.reset_stats()
        tally.run([*args, "--store", "saved.db"], work, expect=0)
        lost, duplicated = exactly_once(read_jsonl(work / "out.jsonl"), rows)
        resent = len(server.requests)
        assert not lost and not duplicated and resent == rows - kept, (lost, duplicated, resent, kept)
        # a config file saved with a BOM is read
        (work / "c.toml").write_bytes(b"\xef\xbb\xbfmodel = \"llama3.2\"\n")
        (work / "one.jsonl").write_text('{"prompt": "bom"}\n', encoding="utf-8")
        tally.run(["run", "one.jsonl", "-o", "one.out.jsonl", "-c", "c.toml", "-s", server.url,
                   "--progress", "none"], work, expect=0)
    # a state file from another version of corral
    state = work / "fleet"
    state.mkdir()
    member = {"name": "ollama-0", "engine": "ollama", "gpu": 0, "host": "127.0.0.1", "port": 1,
              "log": str(state / "ollama-0.log"), "pid": None, "start_time": None, "cmdline": [],
              "model": None, "error": None, "added_in_a_later_version": True}
    (state / "fleet.json").write_text(json.dumps({"members": [member], "future": 1}), encoding="utf-8")
    tally.run(["serve", "status", "--state-dir", str(state)], work, expect=None)
    tally.run(["serve", "stop", "--state-dir", str(state)], work, expect=None)
    # UTF-32 is called UTF-32, in a prompt file and in a table
    (work / "w.jsonl").write_bytes('{"prompt": "x"}\n'.encode("utf-32"))
    (work / "w.csv").write_bytes("id,text\n1,x\n".encode("utf-32"))
    tally.run(["run", "w.jsonl", "-o", "w.out.jsonl", "-s", "http://127.0.0.1:9", "-m", "x"], work,
              fragment="w.jsonl:1: file is UTF-32, not UTF-8")
    tally.run(["analyze", "w.csv", "-o", "w.out.csv", "-s", "http://127.0.0.1:9", "-m", "x"], work,
              fragment="w.csv: file is UTF-32, not UTF-8")
    figures = tally.figures()
    figures.update(rows=rows, salvaged=kept, resent=resent, salvage_line=salvage_line)
    figures["setup"] = (f"{rows} rows journaled, then garbage over a third of the journal; a serve "
                        "state file with unknown keys; a TOML with a BOM; UTF-32 JSONL and CSV")
    figures["result"] = (f"{_table(tally)}; salvage kept {kept} rows, the re-run sent the "
                         f"{resent} lost ones, lost 0, duplicated 0")
    return figures


# ---- 8. the lock follows the real file -----------------------------------------------------------

def linked_store(work: Path, rows: int = 120) -> Figures:
    """A second run on the same journal through a symlink (and on the same output through one) is
    refused while the first runs; the first completes with every row sent once."""
    tally = _Tally()
    write_prompts(work / "p.jsonl", rows)
    (work / "link.db").symlink_to("real.db")
    (work / "link.jsonl").symlink_to("out.jsonl")
    with FakeServer(slots=2, latency=0.05) as server:
        first = start_corral(["run", "p.jsonl", "-o", "out.jsonl", "--store", "real.db", "-s", server.url,
                              "-m", "llama3.2", "-j", "2", "--progress", "none"], work)
        wait_for(lambda: server.completed >= 4 or first.poll() is not None, 60, "the first run to start")
        tally.run(["run", "p.jsonl", "-o", "other.jsonl", "--store", "link.db", "-s", server.url,
                   "-m", "llama3.2", "--progress", "none"], work, fragment="in use by another corral process")
        tally.run(["run", "p.jsonl", "-o", "link.jsonl", "--store", "third.db", "-s", server.url,
                   "-m", "llama3.2", "--progress", "none"], work, fragment="another corral process")
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        sent = len(server.requests)
    lost, duplicated = exactly_once(read_jsonl(work / "out.jsonl"), rows)
    assert sent == rows and not lost and not duplicated, (sent, lost, duplicated)
    figures = tally.figures()
    figures.update(rows=rows, requests=sent)
    figures["setup"] = f"{rows} rows; a second run given the journal (and the output) through a symlink"
    figures["result"] = f"{_table(tally)}; {sent} requests for {rows} rows"
    return figures


# ---- 9. terminal safety ---------------------------------------------------------------------------

_ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202e"


def terminal_escapes(work: Path) -> Figures:
    """Answers and error texts holding escape sequences (window title, clear screen, colour, a
    right-to-left override): `corral show` and the failed-row list print them visibly."""
    tally = _Tally()
    write_prompts(work / "p.jsonl", 6)
    with FakeServer(slots=2, responder=lambda body: f"answer {_ESCAPES}") as server:
        server.fail_message = f"refused {_ESCAPES}"
        server.fail_next(2, status=400)
        _, out, err = tally.run(["run", "p.jsonl", "-o", "out.jsonl", "--output-dir", "answers", "-s",
                                 server.url, "-m", "llama3.2", "--progress", "none"], work, expect=1)
    shown = [out, err]
    for source in ("out.jsonl", "answers"):
        _, out, err = tally.run(["show", source], work, expect=0)
        shown += [out, err]
        assert "\\x1b]0;pwned" in out, out[:500]
    raw = sum(text.count("\x1b") + text.count("\u202e") for text in shown)
    assert raw == 0, raw
    figures = tally.figures()
    figures["raw_escapes_printed"] = raw
    figures["setup"] = "answers and errors with OSC title, clear screen, colour, RLO: run's failed rows, show"
    figures["result"] = f"{_table(tally)}; 0 raw escape characters printed (shown as \\x1b, \\u202e)"
    return figures


# ---- 10. the rest: implicit ids, CSV headers, a full --output-dir ----------------------------------

def the_rest(work: Path) -> Figures:
    """An explicit id equal to another line's number; a CSV header cell that is a formula; an
    --output-dir whose every file fails with ENOSPC (no ``.part`` or ``.tmp`` left behind)."""
    tally = _Tally()
    (work / "ids.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "id": "1"}\n{"prompt": "c", "id": "~1"}\n'
                                    '{"prompt": "d"}\n{"prompt": "e"}\n', encoding="utf-8")
    formula = "=HYPERLINK(\"http://x\",\"y\")"
    (work / "t.csv").write_text(f"text,\"{formula.replace(chr(34), chr(34) * 2)}\"\nhello,1\n", encoding="utf-8")
    write_prompts(work / "p.jsonl", 40)
    with FakeServer(slots=4) as server:
        base = ["-s", server.url, "-m", "llama3.2", "--progress", "none"]
        tally.run(["run", "ids.jsonl", "-o", "ids.out.jsonl", *base], work, expect=0)
        ids = [r["id"] for r in read_jsonl(work / "ids.out.jsonl")]
        assert len(set(ids)) == len(ids) == 5, ids
        tally.run(["analyze", "t.csv", "-o", "t.out.csv", *base], work, expect=0)
        header = (work / "t.out.csv").read_text(encoding="utf-8").splitlines()[0]
        assert "'=HYPERLINK" in header, header
        # learn the per-prompt file names, then make each one's .part a full disk
        tally.run(["run", "p.jsonl", "-o", "first.jsonl", "--output-dir", "learn", *base], work, expect=0)
        (work / "full").mkdir()
        for name in os.listdir(work / "learn"):
            (work / "full" / f"{name}.part").symlink_to("/dev/full")
        planted = len(os.listdir(work / "full"))
        tally.run(["run", "p.jsonl", "-o", "second.jsonl", "--store", "second.db", "--output-dir",
                   "full", *base], work, fragment="No space left")
    left = [p.name for p in (work / "full").iterdir() if not p.is_symlink()]
    tmp = [p.name for p in (work / "full").iterdir() if p.name.endswith((".tmp", ".part")) and not p.is_symlink()]
    assert not left and not tmp, (left, tmp)
    figures = tally.figures()
    figures.update(ids=ids, planted=planted, left_behind=len(left))
    figures["setup"] = ("explicit ids \"1\" and \"~1\" beside implicit ones; a CSV header cell "
                        f"`{formula}`; --output-dir with every file on /dev/full")
    figures["result"] = (f"{_table(tally)}; ids {', '.join(ids)}; header cell written `'=HYPERLINK...`; "
                         f"0 of {planted} per-prompt files left a .part/.tmp behind")
    return figures
