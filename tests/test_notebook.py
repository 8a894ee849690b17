"""corral in a real Jupyter kernel (nbclient): the stop button ends a job and keeps its journal, a
re-run resumes, and progress is one bar redrawn in the cell's output.

Every front runs on its own fake server whose answers take a while; the test presses "stop" (the
kernel manager's interrupt, a SIGINT to the kernel) once the server has answered a few requests,
and counts what the server received: never a duration.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import corral
from tests.fakes import FakeServer
from tests.notebooks import FRONTS, PRESS_STOP_AT, ROWS, SETUP, Front, Kernel, error_name, outputs

pytest.importorskip("nbclient")
pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")


@dataclass
class Seen:
    """What one front did in the kernel: stopped, then run again to the end."""

    front: Front
    stopped_error: str | None = None
    sent_before_stop: int = 0          # requests the server had when the stopped cell ended
    journal: dict[str, Any] = field(default_factory=dict)   # `corral status --json` after the stop
    sent_by_rerun: int = 0
    check: dict[str, Any] = field(default_factory=dict)
    bars: list[str] = field(default_factory=list)           # the text of each display, stopped then re-run
    streamed: str = ""


async def _stop_and_rerun(servers: list[FakeServer], folder: Path) -> list[Seen]:
    kernel = Kernel()
    seen = []
    async with kernel.client.async_setup_kernel():
        setup = await kernel.run(SETUP.format(rows=ROWS))
        assert error_name(setup) is None, setup.outputs
        for front, server in zip(FRONTS, servers):
            one = Seen(front)
            call = front.call.format(url=server.url, dir=folder)
            stopped, _ = await kernel.stop_when(call, server, PRESS_STOP_AT)
            one.stopped_error = error_name(stopped)
            one.sent_before_stop = len(server.requests)
            status = corral("status", str(folder / front.journal), "--json")
            one.journal = json.loads(status.stdout) if status.stdout else {"stderr": status.stderr}
            server.latency = 0.0
            rerun = await kernel.run(call)
            assert error_name(rerun) is None, (front.name, rerun.outputs)
            one.sent_by_rerun = len(server.requests) - one.sent_before_stop
            checked = await kernel.run(front.check.format(dir=folder))
            one.check = json.loads(checked.outputs[-1]["text"])
            one.bars = [o["data"]["text/plain"] for cell in (stopped, rerun) for o in outputs(cell, "display_data")]
            one.streamed = "".join(o["text"] for cell in (stopped, rerun) for o in outputs(cell, "stream"))
            seen.append(one)
    return seen


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel's connection files in the test's folder, not the user's Jupyter runtime folder."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return tmp_path


def test_stop_button_keeps_the_journal_and_a_rerun_resumes(folder: Path, fake_ollama_factory: Any) -> None:
    servers = [fake_ollama_factory(latency=0.05, slots=2) for _ in FRONTS]
    for one in asyncio.run(_stop_and_rerun(servers, folder)):
        name = one.front.name
        assert one.stopped_error == "KeyboardInterrupt", name
        assert one.sent_before_stop < ROWS // 4, (name, one.sent_before_stop)
        assert one.journal.get("state") == "interrupted", (name, one.journal)
        assert one.check == {"rows": ROWS, "ok": True}, name
        # Rows answered before the stop were kept; the re-run sent only the others.
        kept = one.journal["journal_rows"]["ok"]
        assert ROWS - one.sent_by_rerun > 0, (name, one.sent_by_rerun)
        if name != "embed":  # vectors are kept in their own table, not counted as journal rows
            assert one.sent_by_rerun == ROWS - kept, (name, one.sent_by_rerun, kept)
        if one.bars:  # the fronts that show progress: the stopped bar says so, the re-run's finished
            assert "stopped" in one.bars[0] and "finished" in one.bars[-1], (name, one.bars)
        assert "corral:" not in one.streamed, name  # no log lines on stderr


def test_progress_is_one_bar_redrawn_in_place(folder: Path, fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(latency=0.01, slots=4)
    kernel = Kernel()

    async def exercise() -> Any:
        async with kernel.client.async_setup_kernel():
            await kernel.run("import corral, pandas as pd")
            return await kernel.run(
                f"out = corral.run_analysis(pd.DataFrame({{'text': [f't{{i}}' for i in range(60)]}}),"
                f" servers=['{server.url}'], store='{folder}/bar.db')")

    cell = asyncio.run(exercise())
    assert error_name(cell) is None, cell.outputs
    displays = outputs(cell, "display_data")
    assert len(displays) == 1, cell.outputs  # one output, updated in place (nbclient applies the updates)
    text = displays[0]["data"]["text/plain"]
    assert text.startswith("corral: 60/60 done") and "finished" in text, text
    assert "<progress" in displays[0]["data"]["text/html"]
    assert not outputs(cell, "stream"), cell.outputs
