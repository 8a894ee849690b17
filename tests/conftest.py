"""Shared test helpers: fake servers (tests/fakes), and running the real `corral` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.fakes.fixtures"]

ROOT = Path(__file__).resolve().parent.parent


def corral(*args: str, cwd: Path | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m corral ARGS` as a user would, capturing output (never a terminal)."""
    full_env = {**os.environ, "CORRAL_LOG_INTERVAL": "1", **(env or {})}
    full_env.pop("OLLAMA_HOST", None)
    if env and "OLLAMA_HOST" in env:
        full_env["OLLAMA_HOST"] = env["OLLAMA_HOST"]
    return subprocess.run([sys.executable, "-m", "corral", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def run_corral():
    return corral
