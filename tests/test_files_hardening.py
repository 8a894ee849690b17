"""Issue #17, part B: each scenario of ``tests/scenarios_files.py`` (files, keys, inputs,
terminals). The scenarios check their own invariants; the asserts here restate the issue's counts,
which must be 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import scenarios_files

ZERO = ("tracebacks", "hangs", "files_replaced", "cells_overwritten", "key_chars_leaked")


@pytest.mark.parametrize("scenario", [
    "column_clash", "key_leaks", "bad_lines", "damaged_files", "linked_store", "terminal_escapes",
    "the_rest",
])
def test_scenario(tmp_path: Path, scenario: str) -> None:
    figures = getattr(scenarios_files, scenario)(tmp_path)
    print(f"\n{figures['setup']}\n  -> {figures['result']}")
    assert all(figures[name] == 0 for name in ZERO), figures
    assert figures["cases"] > 0


def test_key_runs_are_masked_wherever_they_are() -> None:
    from corral.secrets import mask_key, redact_url

    key = scenarios_files.KEY
    for text in (f"bad key {key}", f"bad key {key[:-4]}****", f"{key[10:30]} was quoted", f"{'x' * 600}{key}"):
        assert scenarios_files.key_runs(mask_key(text, key)) == 0, text
    assert mask_key("nothing secret here", key) == "nothing secret here"
    assert redact_url("http://alice:pw@host:1/v1?api_key=abc&x=1") == "http://***@host:1/v1?api_key=***&x=1"


def test_a_cut_error_message_never_ends_inside_the_key() -> None:
    from corral.backends.base import error_message
    from corral.secrets import mask_key

    key = scenarios_files.KEY
    body = ('{"error": {"message": "' + "y" * 490 + key + '"}}').encode()
    assert scenarios_files.key_runs(error_message(body, lambda t: mask_key(t, key))) == 0
