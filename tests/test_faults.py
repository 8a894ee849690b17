"""Issue #7's fault-injection suite: each scenario of ``tests/scenarios.py`` at CI size.

The scenario functions check their own invariants (nothing lost or duplicated, bounded re-sends,
bounded time, one-line errors...) and return figures; the asserts here restate the headline ones.
``benchmarks/faults.py`` runs the same functions at full size and prints the table in the README.
Malformed inputs (scenario 10) are in ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import scenarios
from tests.conftest import alive, wait_gone


def _show(figures: dict) -> None:
    print(f"\n{figures['setup']}\n  -> {figures['result']}")


def test_01_sigkill_at_20_random_moments_of_2000_rows(tmp_path: Path) -> None:
    figures = scenarios.sigkill_resume(tmp_path, rows=2000, kills=20)
    _show(figures)
    assert figures["lost"] == figures["duplicated"] == 0
    assert figures["resent_over_in_flight"] == 0 and figures["max_in_flight"] <= figures["slots"]


def test_02_one_of_three_servers_killed_and_restarted(tmp_path: Path) -> None:
    figures = scenarios.server_dies(tmp_path, rows=6000)
    _show(figures)
    assert figures["lost"] == figures["duplicated"] == figures["failed"] == 0
    assert figures["benched"] and figures["reprobed_back"] and figures["rows_after_revival"] > 0


def test_03_busy_503_no_retry_storm(tmp_path: Path) -> None:
    figures = scenarios.busy_503(tmp_path, rows=600)
    _show(figures)
    assert figures["failed"] == 0 and figures["requests_per_row"] <= 1.6
    assert figures["backoff_log_lines"] == figures["busy_answers"] > 0


def test_04_server_that_never_answers(tmp_path: Path) -> None:
    figures = scenarios.hung_server(tmp_path, rows=100, timeout=0.5, alone=8)
    _show(figures)
    # Each case ended on its own (the scenario checks how); the durations are for the benchmark table.
    assert figures["alone_rows"] == 8 and "beside_good_hung_requests" in figures


@pytest.mark.parametrize("transport", ["lean", "aiohttp"])
def test_05_slow_loris_and_dropped_connections(tmp_path: Path, transport: str) -> None:
    figures = scenarios.slow_and_dropped(tmp_path, rows=150, timeout=0.5, transport=transport)
    _show(figures)
    assert figures["wrong_answers"] == figures["bad_journal_rows"] == 0 and figures["dropped"] > 0


def test_06_unknown_model_fails_fast(tmp_path: Path) -> None:
    figures = scenarios.unknown_model(tmp_path)
    _show(figures)
    assert figures["generation_requests"] == 0 and figures["exit_code"] == 2


def test_07_invalid_json_and_endless_whitespace(tmp_path: Path) -> None:
    figures = scenarios.bad_json(tmp_path, rows=30)
    _show(figures)
    assert figures["whitespace_requests"] == 3 * 30


def test_08_context_overflow(tmp_path: Path) -> None:
    figures = scenarios.context_overflow(tmp_path, rows=100)
    _show(figures)
    assert figures["vllm_failed"] == figures["llama.cpp_failed"] == 10


def test_09_disk_full_mid_run(tmp_path: Path) -> None:
    figures = scenarios.disk_full(tmp_path, rows=2000)
    _show(figures)
    assert figures["journal_resent"] == figures["output_resent"] == 0


def test_11_second_run_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    figures = scenarios.two_runs(tmp_path, rows=200)
    _show(figures)
    assert figures["sent_twice"] == 0 and figures["lost"] == 0


def test_12_formula_injection_neutralised(tmp_path: Path) -> None:
    figures = scenarios.formula_injection(tmp_path)
    _show(figures)
    assert figures["xlsx_formula_cells"] == 0


def test_13_api_key_never_written_or_printed(tmp_path: Path) -> None:
    figures = scenarios.secrets(tmp_path)
    _show(figures)
    assert figures["leaks"] == 0 and figures["files_scanned"] > 5


def test_14_ctrl_c_journals_and_resumes(tmp_path: Path) -> None:
    figures = scenarios.ctrl_c(tmp_path, rows=300)
    _show(figures)
    assert figures["resent"] <= figures["in_flight_at_stop"]


@pytest.mark.slow
def test_14_ctrl_c_with_the_embedded_server_leaves_no_child(tmp_path: Path) -> None:
    figures = scenarios.ctrl_c(tmp_path, rows=12, local=True)
    _show(figures)
    assert figures["children_left"] == 0


_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from corral.local import LocalServer
    srv = LocalServer(n_parallel=1, engine="xllamacpp", startup_timeout=120, log_path=sys.argv[1])
    srv.start()
    print(srv.pid, srv.url, flush=True)
    time.sleep(600)
""")

_CLIENT = textwrap.dedent("""
    import json, sys, threading, urllib.request
    body = json.dumps({{"model": "smollm2", "max_tokens": 4000, "temperature": 1,
                       "messages": [{{"role": "user", "content": "Count from 1 to 10000."}}]}}).encode()
    def ask():
        req = urllib.request.Request(sys.argv[1] + "/v1/chat/completions", body,
                                     {{"Content-Type": "application/json"}})
        try:
            urllib.request.urlopen(req, timeout=600).read()
        except Exception:
            pass
    threads = [threading.Thread(target=ask) for _ in range(int(sys.argv[2]))]
    for t in threads:
        t.start()
    print("sending", flush=True)
    for t in threads:
        t.join()
""")


@pytest.mark.slow
def test_local_server_stops_even_with_a_client_still_waiting(tmp_path: Path) -> None:
    """The embedded server's owner is SIGKILLed while another client waits for a long answer: the
    server must still go (llama.cpp's own shutdown waits for that client for ever)."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    (tmp_path / "holder.py").write_text(_HOLDER.format(src=src))
    (tmp_path / "client.py").write_text(_CLIENT.format())
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(tmp_path / "log")],
                              stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert holder.stdout is not None
        pid, url = holder.stdout.readline().split()
        # two requests on one slot: one generating, one waiting for the slot
        client = subprocess.Popen([sys.executable, str(tmp_path / "client.py"), url, "2"],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "sending"
        time.sleep(1.5)  # the requests are in the server
        holder.kill()
        holder.wait()
        assert wait_gone(int(pid), 15), "the server outlived its owner"
    finally:
        for proc in (holder, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
        if "pid" in locals() and alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)


# -- issue 18, items 1 and 3 (tests/scenarios_fleet.py; benchmarks/faults.py runs them larger) --
def test_41_a_server_down_at_the_start_joins_when_it_comes_up(tmp_path: Path) -> None:
    from tests import scenarios_fleet

    figures = scenarios_fleet.down_at_start(tmp_path, rows=400)
    _show(figures)
    assert figures["lost"] == figures["duplicated"] == 0 and figures["by_late"] > 0


def test_42_a_503_only_server_beside_a_good_one_is_benched(tmp_path: Path) -> None:
    from tests import scenarios_fleet

    figures = scenarios_fleet.busy_beside_good(tmp_path, rows=400, alone=10)
    _show(figures)
    assert figures["busy_requests"] < 0.05 * (figures["busy_requests"] + figures["good_requests"])


def test_43_published_done_follows_the_rows_journaled(tmp_path: Path) -> None:
    from tests import scenarios_fleet

    figures = scenarios_fleet.progress_accuracy(tmp_path, rows=600)
    _show(figures)
    assert figures["largest_done_published"] > 4
