"""Issue #7, scenario 10: malformed inputs through the real CLI. Each must end with exit code 2 and
one line naming the file (and the line, where there is one), no traceback, nothing sent. Unusual
but valid inputs (byte-order marks, a 10 MB cell or prompt) must simply work.

The cases live in ``tests/scenarios.py`` so that ``benchmarks/faults.py`` reports the same list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeServer
from tests.scenarios import BAD_INPUTS, GOOD_ODD_INPUTS, bad_input, odd_input


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(slots=4) as fake:
        yield fake


def test_at_least_15_malformed_inputs_are_covered() -> None:
    assert len(BAD_INPUTS) >= 15


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_malformed_input_is_one_line_exit_2(tmp_path: Path, server: FakeServer, case) -> None:
    figures = bad_input(tmp_path, server, case)
    assert figures["error"].startswith(f"corral: error: {case[4]}")


@pytest.mark.parametrize("case", GOOD_ODD_INPUTS, ids=[c[0] for c in GOOD_ODD_INPUTS])
def test_odd_but_valid_input_runs(tmp_path: Path, server: FakeServer, case) -> None:
    odd_input(tmp_path, server, case)
    out = tmp_path / ("out.jsonl" if case[3][0] == "run" else "out.csv")
    assert out.exists() and out.stat().st_size > 0
