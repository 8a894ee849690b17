"""The README runs as written: every Python and shell example, against one fake Ollama server.

Blocks are found by `tests.readme_examples` (so examples added later are picked up), run in file
order in one working folder that holds the shipped ``examples/`` and the files the README takes as
the reader's own (``prompts.jsonl``, ``cluster.toml``, ``movies.parquet``...). Server addresses in
the examples (``http://gpu1:11434``, ``gpu2:11434``, ``127.0.0.1:11434``) become the fake's, and
``OLLAMA_HOST`` points at it for examples that name no server. What cannot run here is skipped with
its reason: installs, make targets, benchmarks, servers that keep running, transcripts of recorded
output; examples on the real embedded model are marked slow, Ray examples need Ray. A transcript's
command whose recorded answer is one ``corral: error:`` line is run in a folder of its own (with the
files `ERROR_FILES` gives it) and must print exactly that line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import corral_env
from tests.fakes import FakeServer
from tests.readme_examples import Example, blocks, python_source, shell_commands, transcript_errors

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Every model name the README's examples ask for.
MODELS = ("llama3.2", "mistral", "phi3.5", "gemma3:4b", "qwen3:8b", "gemma3", "qwen2.5:32b", "nomic-embed-text")

#: What the Python examples take as read: the imports a notebook would have above them.
PRELUDE = "import time\nimport corral\nimport pandas as pd\n"

#: (pattern, reason): examples that are not run here, and why.
NOT_RUN = [
    (r"^\s*make\b", "a make target: installs and runs the whole suite"),
    (r"^\s*pip install\b", "installs from PyPI"),
    (r"\bbenchmarks/", "a benchmark of minutes; its figures are in the README"),
    (r"\bcorral serve\b", "starts Ollama / llama.cpp servers on GPUs (tests/test_serve.py runs serve on fakes)"),
    (r"\bcorral gateway\b", "a server that keeps running (tests/test_gateway.py)"),
]
#: (pattern, reason): examples on the real embedded model, run with ``-m slow``.
LOCAL = (r"--local\b|local=True|servers=\"local\"", "needs the embedded llama.cpp model")
#: The embedded model writes whole answers on the CPU (the README's 24 prompts, up to ~500 tokens
#: each, took 140 s beside one other busy process on 2 cores): a busier machine must not fail them.
LOCAL_TIMEOUT = 900
#: Examples on Ray (not a test dependency): run when Ray is installed, on a local Ray.
RAY = r"--ray\b|\bimport ray\b"


#: The files a transcript's failing command needs to fail as the README shows (by command).
ERROR_FILES: dict[str, dict[str, bytes]] = {
    "corral run prompts.jsonl -m llama3.2 -o out.jsonl": {"prompts.jsonl": b'{"prompt": "ok"}\n{"prompt": oops}\n'},
    "corral run p.jsonl": {"p.jsonl": b'{"prompt": "hi"}\n'},
    "corral analyze gold.csv": {"gold.csv": b"text,label,prob\nGreat film.,pos,0.9\n"},
    "corral analyze cafe.csv": {"cafe.csv": "text,n\r\nLe café est fermé.,1\r\n".encode("cp1252")},
    "corral run q.jsonl --config bad.toml": {
        "q.jsonl": b'{"prompt": "hi"}\n',
        "bad.toml": b'model = "llama3.2"\n[[servers]]\nurl = "http://127.0.0.1:1"\napi = "openai"\nrpm = 1.5\n'},
    "corral analyze in.csv -o out.csv --config c.toml": {
        "in.csv": b"text\nhello\n", "c.toml": b'model = "llama3.2"\noptions = { temprature = 0 }\n'},
}
#: Failing commands whose setting cannot be made here, and why.
ERROR_NOT_RUN = {
    "corral run prompts.jsonl -o out.jsonl -s": "needs a journal damaged on disk (scenarios_files.py damages one)",
}


def error_examples() -> list[Any]:
    found: list[Any] = []
    for block in blocks(README):
        if block.kind != "transcript":
            continue
        for example, expected in transcript_errors(block):
            reason = next((why for prefix, why in ERROR_NOT_RUN.items() if example.text.startswith(prefix)), None)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            found.append(pytest.param(example, expected, id=example.name, marks=marks))
    return found


def examples() -> list[Any]:
    found: list[Any] = []
    for block in blocks(README):
        for example in shell_commands(block) if block.kind == "shell" else [block]:
            found.append(pytest.param(example, id=example.name, marks=marks(example)))
    return found


def marks(example: Example) -> list[Any]:
    if example.opted_out:
        return [pytest.mark.skip(reason=f"README opts out: {example.opted_out}")]
    if example.kind == "transcript":
        return [pytest.mark.skip(reason="a transcript of a run (its one-line errors are checked below)")]
    for pattern, reason in NOT_RUN:
        if re.search(pattern, example.text, re.M):
            return [pytest.mark.skip(reason=reason)]
    if re.search(LOCAL[0], example.text):
        return [pytest.mark.slow, pytest.mark.timeout(LOCAL_TIMEOUT)]
    if re.search(RAY, example.text):
        return [pytest.mark.slow, pytest.mark.skipif(not _has_ray(), reason="needs Ray: pip install 'corral[ray]'")]
    return []


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def substitute(text: str, server: FakeServer) -> str:
    """The example's servers (``gpuN``, Ollama's default port 11434) become the fake; a deliberately
    bad address such as ``127.0.0.1:0`` stays; a Ray cluster address becomes a local Ray."""
    host = server.url.split("://", 1)[1]
    text = re.sub(r"https?://(?:gpu\d+(?::\d+)?|localhost:11434|127\.0\.0\.1:11434)\b", server.url, text)
    text = re.sub(r"\b(?:gpu\d+|localhost|127\.0\.0\.1):11434\b", host, text)
    return re.sub(r"--ray (?:auto|ray://\S+)", "--ray local", text)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    fake = FakeServer(api="ollama", models=MODELS).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, server: FakeServer) -> Path:
    """A reader's folder: the shipped examples, and the files the README assumes they have."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", work / "examples")
    shutil.copy(ROOT / "examples" / "prompts.jsonl", work / "prompts.jsonl")
    cluster = f'model = "llama3.2"\n\n[[servers]]\nurl = "{server.url}"\napi = "ollama"\n'
    (work / "cluster.toml").write_text(cluster)
    for gpu in range(1, 8):  # what `corral serve --pull qwen2.5:32b -o gpuN.toml` writes on each machine
        (work / f"gpu{gpu}.toml").write_text(
            f'model = "qwen2.5:32b"\n\n[[servers]]\nurl = "{server.url}"\napi = "ollama"\nname = "gpu{gpu}"\n')
    speeches = pd.read_csv(ROOT / "examples" / "speeches.csv")
    pd.DataFrame({"overview": speeches["text"]}).to_parquet(work / "movies.parquet")
    speeches[["text"]].to_csv(work / "notes.csv", index=False)
    _study_table().to_csv(work / "labelled.csv", index=False)
    (work / "p.txt").write_text("Label this: {text}\n")
    for folder in ("big", "data"):
        (work / folder).mkdir()
        speeches[["text"]].to_parquet(work / folder / "part-0.parquet")
    _shims(work / "bin")
    return work


def _study_table() -> pd.DataFrame:
    """The README's agreement example: three models' stars, labels and probabilities, and gold stars."""
    rows = []
    for i in range(40):
        row: dict[str, Any] = {"text": f"review {i}", "true_stars": 1 + i % 5}
        for shift, model in enumerate(("llama3.2", "qwen3:8b", "gemma3")):
            row[f"stars_{model}"] = 1 + (i + (shift if i % 3 == 0 else 0)) % 5
            row[f"label_{model}"] = "pos" if (i + shift * (i % 4 == 0)) % 2 else "neg"
            row[f"prob_{model}"] = round(((i * 7 + shift) % 10) / 10, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _shims(folder: Path) -> None:
    """``corral`` and ``python`` as a reader's shell has them: this interpreter, this checkout."""
    folder.mkdir()
    for name, target in (("corral", f'"{sys.executable}" -m corral'), ("python", f'"{sys.executable}"')):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)


def _env(workdir: Path, server: FakeServer) -> dict[str, str]:
    env = corral_env({"OLLAMA_HOST": server.url.split("://", 1)[1]})
    env["PATH"] = f"{workdir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("example", examples())
def test_readme_example_runs(example: Example, workdir: Path, server: FakeServer) -> None:
    if example.kind == "python":
        command = [sys.executable, "-c", PRELUDE + substitute(python_source(example.text), server)]
    else:
        command = ["bash", "-c", substitute(example.text, server)]
    timeout = LOCAL_TIMEOUT if re.search(LOCAL[0], example.text) else 300
    done = subprocess.run(command, cwd=workdir, env=_env(workdir, server), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"README line {example.line} failed (exit {done.returncode}):\n"
                                  f"{example.text}\n--- stderr:\n{done.stderr[-3000:]}")


@pytest.mark.parametrize("example, expected", error_examples())
def test_readme_error_transcript_is_what_corral_prints(example: Example, expected: str, tmp_path: Path,
                                                       server: FakeServer) -> None:
    for prefix, files in ERROR_FILES.items():
        if example.text.startswith(prefix):
            for name, data in files.items():
                (tmp_path / name).write_bytes(data)
    _shims(tmp_path / "bin")
    done = subprocess.run(["bash", "-c", substitute(example.text, server)], cwd=tmp_path,
                          env=_env(tmp_path, server), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [substitute(expected, server)], \
        f"README line {example.line}: {example.text}"


def test_the_extraction_finds_every_kind_of_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("\n".join([
        "```bash", "corral run a.jsonl \\", "  -o out.jsonl   # a comment", "", "# only a comment",
        "corral show out.jsonl", "```",
        "<!-- not-tested: needs a GPU -->", "```python", "import corral", "```",
        "- a list item:", "", "  ```python", "  >>> x = 1", "  >>> x", "  1", "  ```",
        "```", "$ corral status out.jsonl", "corral: ...", "```",
        "```toml", "model = 'x'", "```",
    ]))
    found = blocks(readme)
    assert [b.kind for b in found] == ["shell", "python", "python", "transcript"]
    assert [c.text for c in shell_commands(found[0])] == ["corral run a.jsonl -o out.jsonl   # a comment",
                                                          "corral show out.jsonl"]
    assert found[1].opted_out == "needs a GPU" and found[2].opted_out is None
    assert python_source(found[2].text) == "x = 1\nx"


def test_readme_examples_use_the_shipped_files_as_they_are() -> None:
    """The shipped tables have the columns the README names (``--text-column speech`` once did not)."""
    text = README.read_text(encoding="utf-8")
    columns = {"examples/speeches.csv": set(pd.read_csv(ROOT / "examples/speeches.csv").columns),
               "examples/events.csv": set(pd.read_csv(ROOT / "examples/events.csv").columns)}
    for match in re.finditer(r"(examples/\w+\.csv)[^\n]*?--text-column (\w+)", text):
        assert match.group(2) in columns[match.group(1)], match.group(0)
    for match in re.finditer(r'(examples/\w+\.csv)"[^)]*?text_column="(\w+)"', text, re.S):
        assert match.group(2) in columns[match.group(1)], match.group(0)
    assert json.loads((ROOT / "examples/prompts.jsonl").read_text().splitlines()[0])


def test_every_fence_in_the_readme_is_a_fence() -> None:
    """A fence with words after it (a paragraph glued to a closing fence) opens a block that runs to
    the end of the file, and every example after it silently goes untested."""
    import re

    fence = re.compile(r"^\s*```[\w-]*\s*$")
    glued = [number for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1)
             if line.lstrip().startswith("```") and not fence.match(line)]
    assert not glued, f"README lines with text after a fence: {glued}"
