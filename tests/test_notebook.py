"""corral in a real Jupyter kernel (nbclient): the stop button ends a job and keeps its journal, a
re-run resumes, and progress is one bar redrawn in the cell's output.

Every front runs on its own fake server whose answers take a while; the test presses "stop" (the
kernel manager's interrupt, a SIGINT to the kernel) once the server has seen a few requests, and
counts what the server received: never a duration.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import corral
from tests.fakes import FakeServer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROWS = 120
PRESS_STOP_AT = 4  # requests the server has answered when "stop" is pressed


@dataclass
class Front:
    """One call of the Python API, run twice in the kernel: stopped, then re-run to the end."""

    name: str
    call: str       # the cell's code; {url} and {dir} are filled in
    check: str      # a cell after the re-run that prints what the test asserts on
    journal: str    # the journal's file name in {dir}


FRONTS = [
    Front("batch_generate",
          "r = corral.batch_generate([f'p{{i}}' for i in range(ROWS)], model='llama3.2', servers=['{url}'],"
          " store='{dir}/bg.db')",
          "print(json.dumps({{'rows': len(r), 'ok': all(x['success'] for x in r)}}))", "bg.db"),
    Front("run_analysis",
          "out = corral.run_analysis(pd.DataFrame({{'text': [f't{{i}}' for i in range(ROWS)]}}),"
          " servers=['{url}'], store='{dir}/ra.db')",
          "print(json.dumps({{'rows': len(out), 'ok': bool(out['error'].isna().all())}}))", "ra.db"),
    Front("fill_missing_fields",
          "filled = corral.fill_missing_fields(pd.DataFrame({{'title_en': [f'event {{i}}' for i in range(ROWS)],"
          " 'City': [None] * ROWS}}), json_fields=['City'], servers=['{url}'], store='{dir}/fm.db')",
          "print(json.dumps({{'rows': len(filled), 'ok': bool(filled['fill_error'].isna().all())}}))", "fm.db"),
    Front("fill_missing_fields_from_csv",
          "pd.DataFrame({{'title_en': [f'event {{i}}' for i in range(ROWS)], 'City': [''] * ROWS}})"
          ".to_csv('{dir}/in.csv', index=False)\n"
          "corral.fill_missing_fields_from_csv('{dir}/in.csv', '{dir}/out.csv', json_fields=('City',),"
          " servers=['{url}'])",
          "f = pd.read_csv('{dir}/out.csv')\n"
          "print(json.dumps({{'rows': len(f), 'ok': bool(f['fill_error'].isna().all())}}))", "out.csv.corral.db"),
    Front("embed",
          "v = corral.embed([f'text {{i}}' for i in range(ROWS)], model='llama3.2', servers=['{url}'],"
          " store='{dir}/em.db', batch_size=1)",
          "print(json.dumps({{'rows': len(v), 'ok': bool((v == v).all())}}))", "em.db"),
]


@dataclass
class Outcome:
    front: Front
    stopped_error: str | None = None   # the stopped cell's exception name
    sent_before_stop: int = 0          # requests the server had when the stopped cell ended
    journal: dict[str, Any] | None = None
    sent_by_rerun: int = 0
    check: dict[str, Any] | None = None
    displays: list[dict[str, Any]] | None = None
    stream_text: str = ""


def _code(source: str) -> Any:
    return nbformat.v4.new_code_cell(source)


async def _run_cell(client: Any, nb: Any, source: str) -> Any:
    nb.cells.append(_code(source))
    index = len(nb.cells) - 1
    await client.async_execute_cell(nb.cells[index], index)
    return nb.cells[index]


async def _stop_when(client: Any, nb: Any, source: str, server: FakeServer, answered: int) -> Any:
    """Run ``source`` and press stop once ``server`` has answered ``answered`` requests."""
    nb.cells.append(_code(source))
    index = len(nb.cells) - 1
    running = asyncio.ensure_future(client.async_execute_cell(nb.cells[index], index))
    while server.completed < answered and not running.done():
        await asyncio.sleep(0.005)
    await client.km.interrupt_kernel()
    await running
    return nb.cells[index]


def _error_name(cell: Any) -> str | None:
    return next((o["ename"] for o in cell.outputs if o["output_type"] == "error"), None)


async def _exercise(servers: list[FakeServer], folder: Path) -> list[Outcome]:
    nb = nbformat.v4.new_notebook()
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    outcomes = []
    async with client.async_setup_kernel():
        setup = await _run_cell(client, nb, f"import json, corral, pandas as pd\nROWS = {ROWS}")
        assert _error_name(setup) is None, setup.outputs
        for front, server in zip(FRONTS, servers):
            outcome = Outcome(front)
            call = front.call.format(url=server.url, dir=folder)
            stopped = await _stop_when(client, nb, call, server, PRESS_STOP_AT)
            outcome.stopped_error = _error_name(stopped)
            outcome.sent_before_stop = len(server.requests)
            status = corral("status", str(folder / front.journal), "--json")
            outcome.journal = json.loads(status.stdout) if status.stdout else {"stderr": status.stderr}
            server.latency = 0.0
            rerun = await _run_cell(client, nb, call)
            assert _error_name(rerun) is None, (front.name, rerun.outputs)
            outcome.sent_by_rerun = len(server.requests) - outcome.sent_before_stop
            checked = await _run_cell(client, nb, front.check.format(dir=folder))
            outcome.check = json.loads(checked.outputs[-1]["text"])
            outcome.displays = [o for o in [*stopped.outputs, *rerun.outputs] if o["output_type"] == "display_data"]
            outcome.stream_text = "".join(o.get("text", "") for o in [*stopped.outputs, *rerun.outputs]
                                          if o["output_type"] == "stream")
            outcomes.append(outcome)
    return outcomes


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel's connection files in the test's folder, not the user's Jupyter runtime folder."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return tmp_path


def test_stop_button_keeps_the_journal_and_a_rerun_resumes(kernel_env: Path, fake_ollama_factory: Any) -> None:
    servers = [fake_ollama_factory(latency=0.05, slots=2) for _ in FRONTS]
    outcomes = asyncio.run(_exercise(servers, kernel_env))
    for outcome in outcomes:
        name = outcome.front.name
        assert outcome.stopped_error == "KeyboardInterrupt", name
        assert outcome.sent_before_stop < ROWS // 4, (name, outcome.sent_before_stop)
        journal = outcome.journal or {}
        assert journal.get("state") == "interrupted", (name, journal)
        assert outcome.check == {"rows": ROWS, "ok": True}, name
        # Rows answered before the stop were kept; the re-run sent only the others.
        kept = journal["journal_rows"]["ok"]
        assert 0 < ROWS - outcome.sent_by_rerun, (name, outcome.sent_by_rerun)
        if name != "embed":  # vectors are kept in their own table, not counted as journal rows
            assert outcome.sent_by_rerun == ROWS - kept, (name, outcome.sent_by_rerun, kept)
        if outcome.displays:  # the fronts that show progress: the stopped bar says so
            assert "stopped" in _last_text(outcome.displays[0]), (name, outcome.displays)
        assert "corral:" not in outcome.stream_text, name


def _last_text(display: dict[str, Any]) -> str:
    return str(display["data"]["text/plain"])


def test_progress_is_one_bar_redrawn_in_place(kernel_env: Path, fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(latency=0.01, slots=4)
    nb = nbformat.v4.new_notebook()
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)

    async def exercise() -> Any:
        async with client.async_setup_kernel():
            await _run_cell(client, nb, "import corral, pandas as pd")
            return await _run_cell(client, nb, (
                f"out = corral.run_analysis(pd.DataFrame({{'text': [f't{{i}}' for i in range(60)]}}),"
                f" servers=['{server.url}'], store='{kernel_env}/bar.db')"))

    cell = asyncio.run(exercise())
    assert _error_name(cell) is None, cell.outputs
    displays = [o for o in cell.outputs if o["output_type"] == "display_data"]
    assert len(displays) == 1, cell.outputs  # one output, updated in place (nbclient applies the updates)
    assert _last_text(displays[0]).startswith("corral: 60/60 done"), displays[0]
    assert "finished" in _last_text(displays[0])
    assert "<progress" in displays[0]["data"]["text/html"]
    assert not [o for o in cell.outputs if o["output_type"] == "stream"], cell.outputs
