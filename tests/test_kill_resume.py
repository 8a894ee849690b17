"""A real `corral run` process SIGKILLed mid-job, then re-run: every input exactly once in the output,
and no request re-sent beyond those in flight at each kill (counted on the fake server).

"In flight" is the client's view: a request is in flight from the moment it is sent until its answer
is journaled. The client never has more than its slots (8) in flight, so a journal that lost answers
it had already received would show up as more than 8 re-sent requests for a kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import read_jsonl, write_jsonl

ROWS = 600
KILLS = 5
SLOTS = 8


def _start(tmp_path: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "run", "p.jsonl", "--server", url, "-m", "llama3.2",
         "-o", "out.jsonl", "-j", str(SLOTS), "--progress", "none"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_sigkill_at_random_moments_then_resume_exactly_once(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=SLOTS, latency=0.02)
    write_jsonl(tmp_path / "p.jsonl", [{"id": f"row-{i}", "prompt": f"prompt {i}"} for i in range(ROWS)])
    rng = random.Random(11)
    in_flight_at_kills = []
    for _ in range(KILLS):
        before = server.completed
        proc = _start(tmp_path, server.url)
        # wait until this run has done some work, then kill at a random moment
        server.wait_until(lambda s: s.completed > before + 5, timeout=30)
        time.sleep(rng.uniform(0.0, 0.25))
        seen_before = server.in_flight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        in_flight_at_kills.append(max(seen_before, server.in_flight))
        server.wait_until(lambda s: s.in_flight == 0, timeout=10)
    assert server.completed < ROWS, "the kills should land before the job is done"

    final = _start(tmp_path, server.url)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [f"row-{i}" for i in range(ROWS)]  # each once, in input order
    assert all(r["response"] == f"echo: prompt {i}" for i, r in enumerate(rows))
    sent = server.count_by_prompt()
    resent = sum(sent.values()) - len(sent)
    assert len(sent) == ROWS
    print(f"\nkills={KILLS} server-side in flight at kills={in_flight_at_kills} resent={resent}")
    assert resent <= KILLS * SLOTS, (resent, in_flight_at_kills)
    assert not (tmp_path / "out.jsonl.part").exists()


def test_ctrl_c_journals_what_arrived_and_the_rerun_resumes(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, latency=0.05)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"prompt {i}"} for i in range(200)])
    proc = _start(tmp_path, server.url)
    server.wait_until(lambda s: s.completed >= 30, timeout=30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["status"] == "interrupted" and 30 <= manifest["counts"]["ok"] < 200
    done_before = server.completed
    server.reset_stats()
    final = _start(tmp_path, server.url)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["response"] for r in rows] == [f"echo: prompt {i}" for i in range(200)]
    resent = sum(server.count_by_prompt().values()) - (200 - done_before)
    assert resent <= SLOTS, resent  # at most the requests in flight when Ctrl-C came
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["cached"] >= 30
