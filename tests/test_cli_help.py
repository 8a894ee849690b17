"""Every option and argument of every command says what it is for; every help page ends with an example."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from corral.cli import _register, app

_register()
ROOT_COMMAND = typer.main.get_command(app)


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(ROOT_COMMAND))


def test_every_command_is_walked() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"run", "analyze", "fill", "agree", "embed", "bench", "merge", "show", "report", "serve",
            "serve status", "serve stop", "cluster", "cluster merge", "status"} <= names


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "corral")
def test_help_page_explains_every_option_and_ends_with_an_example(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    silent = [param.name for param in command.params if not getattr(param, "help", None)]
    assert silent == [], f"corral {' '.join(path)}: no help for {silent}"

    result = CliRunner().invoke(app, [*path, "--help"], prog_name="corral")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    description = result.output.split("Options:")[0].split("Arguments:")[0]
    assert "Example" in description  # the docstring's last paragraph, before the option list
    assert "seed 00" not in result.output.lower()
    options = result.output.split("Options:")[-1]
    assert "<list[str]>" not in options  # a repeatable option names what it takes: --server URL
