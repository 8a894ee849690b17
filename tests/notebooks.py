"""Driving a real Jupyter kernel (nbclient) through corral's sync fronts, for tests/test_notebook.py
and benchmarks/notebook_interrupt.py: the calls as a notebook user writes them, a cell run, and a
cell stopped with the kernel manager's interrupt (the stop button: SIGINT to the kernel)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tests.fakes import FakeServer

ROWS = 120
PRESS_STOP_AT = 4  # requests the server has answered when "stop" is pressed


@dataclass(frozen=True)
class Front:
    """One call of the Python API as a cell; ``check`` is a later cell printing JSON about its result."""

    name: str
    call: str       # {url} and {dir} are filled in; ROWS is a name defined in the kernel
    check: str
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

#: The first cell of every notebook here.
SETUP = "import json, corral, pandas as pd\nROWS = {rows}"


class Kernel:
    """A notebook being written and run cell by cell in one kernel; use inside
    ``async with kernel.client.async_setup_kernel():``."""

    def __init__(self) -> None:
        import nbclient
        import nbformat

        self._new_cell = nbformat.v4.new_code_cell
        self.nb = nbformat.v4.new_notebook()
        self.client = nbclient.NotebookClient(self.nb, timeout=120, kernel_name="python3", allow_errors=True)

    def _append(self, source: str) -> int:
        self.nb.cells.append(self._new_cell(source))
        return len(self.nb.cells) - 1

    async def run(self, source: str) -> Any:
        index = self._append(source)
        await self.client.async_execute_cell(self.nb.cells[index], index)
        return self.nb.cells[index]

    async def stop_when(self, source: str, server: FakeServer, answered: int) -> tuple[Any, float]:
        """Run ``source``, press stop once ``server`` has answered ``answered`` requests; the cell,
        and the seconds from the interrupt to the kernel being idle (for the benchmark only)."""
        index = self._append(source)
        running = asyncio.ensure_future(self.client.async_execute_cell(self.nb.cells[index], index))
        while server.completed < answered and not running.done():
            await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        pressed = loop.time()
        await self.client.km.interrupt_kernel()
        await running
        return self.nb.cells[index], loop.time() - pressed


def error_name(cell: Any) -> str | None:
    return next((o["ename"] for o in cell.outputs if o["output_type"] == "error"), None)


def outputs(cell: Any, kind: str) -> list[Any]:
    return [o for o in cell.outputs if o["output_type"] == kind]
