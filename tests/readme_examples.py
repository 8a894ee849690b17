"""The README's examples as data: every Python and shell block, each shell command on its own.

A block is a fenced ```python or ```bash block (```sh and ```shell too). Console transcripts
(```console, or plain fences whose lines start with ``$ ``) record a run's output; their commands
that answer with one ``corral: error:`` line are checked (`transcript_errors`), the rest are listed
so a test can say they are not re-run. A block opts out with an HTML comment on the line just
before its fence: ``<!-- not-tested: the reason -->``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "shell"}
TRANSCRIPT = {"console", "shell-session"}

_FENCE = re.compile(r"^(\s*)```([\w-]*)\s*$")
_OPT_OUT = re.compile(r"<!--\s*not-tested:\s*(.*?)\s*-->")


@dataclass(frozen=True)
class Example:
    """One runnable thing: a Python block, or one command of a shell block."""

    line: int            # the README line the block (or command) starts on
    kind: str            # "python", "shell" or "transcript"
    text: str
    opted_out: str | None = None

    @property
    def name(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"L{self.line}-{self.kind}: {first[:60]}"


def blocks(readme: Path) -> list[Example]:
    """Every Python, shell and transcript block, in file order, dedented (list items indent them)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not _FENCE.match(lines[end]):
            end += 1
        body = textwrap.dedent("\n".join(lines[index + 1:end]))
        lang = fence.group(2).lower()
        previous = lines[index - 1] if index else ""
        opted = _OPT_OUT.search(previous)
        kind = _kind(lang, body)
        if kind is not None:
            found.append(Example(index + 1, kind, body, opted.group(1) if opted else None))
        index = end + 1
    return found


def _kind(lang: str, body: str) -> str | None:
    if lang in PYTHON:
        return "python"
    if lang in SHELL:
        return "shell"
    if lang in TRANSCRIPT or (lang == "" and any(ln.lstrip().startswith("$ ") for ln in body.splitlines())):
        return "transcript"
    return None


def python_source(body: str) -> str:
    """A block's code: doctest-style blocks (``>>>``) keep only their source lines, not the output."""
    lines = body.splitlines()
    if not any(line.startswith(">>> ") for line in lines):
        return body
    return "\n".join(line[4:] for line in lines if line.startswith((">>> ", "... ")))


def shell_commands(block: Example) -> list[Example]:
    """One Example per command: ``\\`` continuations joined; blank and comment-only lines dropped."""
    commands: list[Example] = []
    pending: list[str] = []
    start = 0
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = block.line + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        commands.append(Example(start, "shell", " ".join(part.strip() for part in pending), block.opted_out))
        pending = []
    return commands


def transcript_errors(block: Example) -> list[tuple[Example, str]]:
    """(command, the one error line recorded after it) for each ``$ corral`` command of a transcript
    whose recorded output is exactly one ``corral: error:`` line."""
    found: list[tuple[Example, str]] = []
    lines = block.text.splitlines()
    for offset, line in enumerate(lines):
        if not line.startswith("$ corral "):
            continue
        output = []
        for after in lines[offset + 1:]:
            if after.startswith("$ "):
                break
            output.append(after)
        if len(output) == 1 and output[0].startswith("corral: error: "):
            found.append((Example(block.line + offset + 1, "error", line[2:], block.opted_out), output[0]))
    return found
