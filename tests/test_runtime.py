"""`run_sync`, the one place the sync fronts run their async job: Ctrl-C (or Jupyter's stop button)
cancels the job so it cleans up, then raises KeyboardInterrupt; whether or not a loop is running."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from corral.runtime import run_sync
from tests.conftest import corral, corral_env

pytestmark = pytest.mark.timeout(60)


class Job:
    """A job that waits until it is cancelled, and says whether its clean-up ran."""

    def __init__(self) -> None:
        self.started = threading.Event()
        # Set by the job's own clean-up; waited on, never timed: on a loaded machine the clean-up
        # may finish after run_sync has re-raised (it goes on in the background then).
        self.cleaned_up = threading.Event()
        self.thread: str | None = None

    async def __call__(self) -> None:
        self.thread = threading.current_thread().name
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned_up.set()


def _interrupt_main_once(started: threading.Event) -> threading.Thread:
    """A SIGINT to the main thread once the job has started, as Jupyter's stop button sends one to
    the kernel (``_thread.interrupt_main`` would not wake a thread blocked in a join)."""
    main = threading.main_thread().ident
    assert main is not None

    def press() -> None:
        started.wait(30)
        signal.pthread_kill(main, signal.SIGINT)
    presser = threading.Thread(target=press)
    presser.start()
    return presser


def test_interrupt_under_a_running_loop_cancels_the_job_on_its_helper_thread() -> None:
    job = Job()

    async def notebook_cell() -> str:
        # Sync code under a running loop: how a Jupyter cell calls corral.run_analysis.
        presser = _interrupt_main_once(job.started)
        try:
            run_sync(job())
        except KeyboardInterrupt:
            return "KeyboardInterrupt"
        finally:
            presser.join()
        return "finished"

    # Like ipykernel: a running loop, and Python's own SIGINT handler (asyncio.run would install its
    # handler, which only cancels the loop's task on a first Ctrl-C).
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(notebook_cell()) == "KeyboardInterrupt"
    finally:
        loop.close()
    assert job.thread == "corral"
    assert job.cleaned_up.wait(30)


def test_interrupt_without_a_loop_cancels_the_job() -> None:
    job = Job()
    presser = _interrupt_main_once(job.started)
    try:
        run_sync(job())
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    presser.join()
    assert outcome == "KeyboardInterrupt"
    assert job.cleaned_up.wait(30)


def test_results_and_errors_come_back_from_the_helper_thread() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("from the job")

    async def cell() -> tuple[int, str]:
        try:
            run_sync(fail())
        except ValueError as exc:
            return run_sync(answer()), str(exc)
        return 0, ""

    assert asyncio.run(cell()) == (42, "from the job")


def test_ctrl_c_in_a_script_stops_batch_generate_and_keeps_the_journal(tmp_path: Path,
                                                                        fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(latency=0.05, slots=2)
    rows = 120
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import corral
        corral.batch_generate([f"p{{i}}" for i in range({rows})], model="llama3.2",
                              servers=["{server.url}"], store="{tmp_path}/j.db")
        print("finished")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=corral_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while server.completed < 4 and proc.poll() is None:
            threading.Event().wait(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "finished" not in out
    assert "KeyboardInterrupt" in err
    assert len(server.requests) < rows // 4
    status = json.loads(corral("status", str(tmp_path / "j.db"), "--json").stdout)
    assert status["state"] == "interrupted"
    assert status["journal_rows"]["ok"] > 0  # rows answered before the signal were kept
