"""Rebuild this folder's journal with corral's code of commit b0064e8 (schema 2), for test_resume.py.

    git worktree add /tmp/base b0064e8
    PYTHONPATH=/tmp/base/src:/tmp/base python tests/data/journal_v2/make.py tests/data/journal_v2
    git worktree remove /tmp/base
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.fakes import FakeServer


def main(folder: Path) -> None:
    with open(folder / "prompts.jsonl", "wb") as handle:
        handle.write(orjson.dumps({"id": "failed", "prompt": "a prompt that failed"}) + b"\n")
        for i in range(20):
            handle.write(orjson.dumps({"id": f"row-{i}", "prompt": f"prompt {i}"}) + b"\n")
    for old in folder.glob("out.jsonl*"):
        old.unlink()
    with FakeServer(slots=1) as server:
        server.fail_next(1, status=400)  # -j 1: the first line is the first request
        subprocess.run([sys.executable, "-m", "corral", "run", "prompts.jsonl", "-o", "out.jsonl", "-s",
                        server.url, "-m", "llama3.2", "-j", "1", "--max-attempts", "1", "--progress",
                        "none", "--no-gpu-monitor"], cwd=folder, check=False)
    for extra in folder.glob("out.jsonl.manifest.json"):
        extra.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
