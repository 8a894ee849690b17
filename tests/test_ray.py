"""corral on Ray (the corral[ray] extra): slot sharing, map_batches, `corral run --ray`, a killed actor.

One local Ray instance (2 CPUs, 127.0.0.1, no dashboard) is shared by the whole module; the CLI runs
in a subprocess that joins it by its address. Fake servers run in this process, so their counters
(requests, peak in-flight) see every actor's traffic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from corral.config import ServerSpec
from corral.errors import UsageError
from tests.conftest import ROOT
from tests.conftest import corral as corral_cli

# Ray's single-machine mode: its processes listen on 127.0.0.1 only (read when Ray is imported; the
# CLI subprocesses inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

import corral  # noqa: E402
import corral.ray  # noqa: E402
from corral.ray.slots import share_slots  # noqa: E402

TEMPLATE = 'Return JSON {"label": string}: {text}'
COLUMNS = ["id", "text", "response", "label", "model", "error"]


def _responder(body: dict) -> str:
    """A label from the text; texts with "bad" get prose, so their rows fail after the re-asks."""
    text = body["messages"][-1]["content"]
    if "bad" in text:
        return "I would rather not answer in JSON."
    return json.dumps({"label": "long" if len(text) > 40 else "short"})


# -- slot shares (no Ray needed) ----------------------------------------------------------------

def _spec(url: str, slots: int) -> ServerSpec:
    return ServerSpec(url=url, max_concurrency=slots)


@pytest.mark.parametrize("slots,actors", [([3, 2], 2), ([8], 3), ([1, 1, 1, 1, 1], 2), ([4, 4], 8),
                                          ([5, 1, 7], 4)])
def test_slot_shares_add_up_to_the_fleet(slots: list[int], actors: int) -> None:
    fleet = [_spec(f"http://h{i}:1", n) for i, n in enumerate(slots)]
    per_server: dict[str, int] = {}
    totals = []
    for index in range(actors):
        mine = share_slots(fleet, actors, index)
        assert mine, "every actor gets at least one slot"
        totals.append(sum(s.max_concurrency for s in mine))
        for spec in mine:
            per_server[spec.url] = per_server.get(spec.url, 0) + spec.max_concurrency
    assert per_server == {s.url: s.max_concurrency for s in fleet}     # respected, not multiplied
    assert max(totals) - min(totals) <= 1                                 # spread evenly


def test_more_actors_than_slots_is_refused() -> None:
    with pytest.raises(UsageError, match="fewer than the 3 actors"):
        share_slots([_spec("http://a:1", 1), _spec("http://b:1", 1)], 3, 0)


# -- the core stays free of Ray -----------------------------------------------------------------

def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_core_and_cli_never_import_ray() -> None:
    result = _python(
        "import sys, corral, corral.api, corral.jobs, corral.tables, corral.embeddings, corral.cli\n"
        "import corral.cli.run, corral.cli.ray_run\n"
        "corral.cli._register()\n"
        "corral.run_analysis\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'corral.ray')\n"
        "print(bad); assert not bad, bad\n")
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_ray_the_error_says_how_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "try:\n    import corral.ray\nexcept ImportError as exc:\n    print('IMPORT:', exc)\n"
            "from corral.cli import main\n"
            f"main(['run', {str(tmp_path)!r}, '--ray', 'local', '-o', {str(tmp_path / 'out')!r}])\n")
    result = _python(code)
    assert "IMPORT: corral.ray needs Ray: pip install 'corral[ray]'" in result.stdout
    assert result.returncode == 2
    assert "pip install 'corral[ray]'" in result.stderr and "Traceback" not in result.stderr


# -- on a local Ray instance ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_address():
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert context.address_info["gcs_address"].startswith("127.0.0.1:")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture
def fleet(fake_ollama_factory):
    """Two servers, 3 + 2 configured slots; the fakes have no slot limit of their own, so their peak
    in-flight count is exactly what the clients sent at once."""
    a = fake_ollama_factory(latency=0.03, responder=_responder)
    b = fake_ollama_factory(api="openai", latency=0.03, responder=_responder)
    config = {"model": "llama3.2", "servers": [
        {"url": a.url, "api": "ollama", "max_concurrency": 3},
        {"url": b.url, "api": "openai", "max_concurrency": 2}]}
    return a, b, config


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    """Three Parquet files, 80 rows each: some empty texts, some that get prose instead of JSON."""
    folder = tmp_path / "in"
    folder.mkdir()
    for part in range(3):
        ids = range(part * 80, part * 80 + 80)
        texts = ["" if i % 37 == 5 else f"bad row {i}" if i % 29 == 3 else
                 f"row {i} " + "word " * (i % 11) for i in ids]
        pd.DataFrame({"id": list(ids), "text": texts}).to_parquet(folder / f"part{part}.parquet")
    return folder


def _single_process(folder: Path, config: dict, tmp_path: Path) -> pd.DataFrame:
    frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    cfg = tmp_path / "single.toml"
    _write_toml(cfg, config)
    out = corral.run_analysis(frame, text_column="text", model_names="llama3.2", prompt_template=TEMPLATE,
                              json_keys=("label",), config=str(cfg), progress=False)
    return _canonical(out)


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[COLUMNS].sort_values("id").reset_index(drop=True)
    return frame.astype(object).where(frame.notna(), None)


def _write_toml(path: Path, config: dict) -> None:
    lines = [f'model = "{config["model"]}"']
    for server in config["servers"]:
        lines += ["[[servers]]", *(f"{k} = {json.dumps(v)}" for k, v in server.items())]
    path.write_text("\n".join(lines) + "\n")


def _processor_kwargs(config: dict, actors: int) -> dict:
    return {"config": config, "num_actors": actors, "text_column": "text",
            "prompt_template": TEMPLATE, "json_keys": ["label"]}


@pytest.mark.timeout(150)
def test_map_batches_matches_single_process_and_respects_the_fleet_slots(
        ray_address, fleet, parquet_dir, tmp_path) -> None:
    a, b, config = fleet
    expected = _single_process(parquet_dir, config, tmp_path)
    assert expected["error"].notna().sum() >= 6          # the test has failing rows to carry
    a.reset_stats()
    b.reset_stats()
    ds = ray.data.read_parquet(str(parquet_dir)).repartition(8)  # blocks for both actors
    out = ds.map_batches(corral.ray.Processor, batch_size=20, batch_format="pandas", num_cpus=0.5,
                         compute=ray.data.ActorPoolStrategy(size=2),
                         fn_constructor_kwargs=_processor_kwargs(config, 2)).to_pandas()
    got = _canonical(out)
    assert got["id"].tolist() == list(range(240))        # each row exactly once
    pd.testing.assert_frame_equal(got, expected)         # the same columns and values, row for row
    assert got["error"].str.startswith("not sent: empty text").sum() >= 6
    # Two actors with 2+1 and 1+1 slots: together never more than each server's configured slots,
    # and the first server's peak of 3 needs both actors at once (one actor alone holds 2 there).
    assert a.max_in_flight == 3 and b.max_in_flight == 2


@pytest.mark.timeout(240)
def test_corral_run_ray_matches_single_process_and_resumes(ray_address, fleet, parquet_dir, tmp_path) -> None:
    a, b, config = fleet
    expected = _single_process(parquet_dir, config, tmp_path)
    cfg = tmp_path / "cluster.toml"
    _write_toml(cfg, config)
    (tmp_path / "p.txt").write_text(TEMPLATE)
    schema = json.dumps({"type": "object", "properties": {"label": {"type": "string"}},
                         "required": ["label"]})
    out_dir = tmp_path / "out"
    args = (str(parquet_dir / "*.parquet"), "--ray", ray_address, "--config", str(cfg), "--text-column",
            "text", "--prompt", f"@{tmp_path / 'p.txt'}", "--schema", schema, "-o", str(out_dir))
    a.reset_stats()
    b.reset_stats()
    first = corral_cli("run", *args, timeout=240)
    assert first.returncode == 1, first.stderr       # some rows fail on purpose: exit 1, like `corral run`
    assert "corral: [3/3]" in first.stderr and "3 partition(s) written, 240 rows" in first.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["corral-ray.manifest.json", "part0.parquet",
                                                         "part1.parquet", "part2.parquet"]
    got = pd.concat([pd.read_parquet(p) for p in sorted(out_dir.glob("*.parquet"))], ignore_index=True)
    pd.testing.assert_frame_equal(_canonical(got), expected)
    assert a.max_in_flight <= 3 and b.max_in_flight <= 2
    sent = len(a.requests) + len(b.requests)

    manifest = json.loads((out_dir / "corral-ray.manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 240
    not_sent = int(expected["error"].fillna("").str.startswith("not sent").sum())
    assert manifest["counts"]["failed"] == int(expected["error"].notna().sum()) - not_sent
    assert [s["slots"] for s in manifest["servers"]] == [3, 2] and manifest["job"]["prompt_template"] == TEMPLATE

    again = corral_cli("run", *args, timeout=240)     # complete partitions are skipped
    assert "3 partition(s), 3 already complete" in again.stderr and again.returncode == 0
    assert len(a.requests) + len(b.requests) == sent

    (out_dir / "part1.parquet").unlink()              # a lost partition is redone, alone
    third = corral_cli("run", *args, timeout=240)
    assert "3 partition(s), 2 already complete" in third.stderr
    assert "1 partition(s) written, 80 rows" in third.stderr
    redo = pd.read_parquet(out_dir / "part1.parquet")
    pd.testing.assert_frame_equal(_canonical(redo), expected[expected["id"].between(80, 159)]
                                  .reset_index(drop=True))
    assert not list(out_dir.glob("*.part"))


def actor_state(actor_id: str) -> str | None:
    from corral.ray.ledger import actor_state as state_of

    return state_of(actor_id)


def _ledger_holders(timeout: float = 60.0, want: int = 2) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for named in ray.util.list_named_actors(all_namespaces=True):
            if not named["name"].startswith("corral-slots-"):
                continue
            try:
                ledger = ray.get_actor(named["name"], namespace=named["namespace"])
                holders = ray.get(ledger.holding.remote(), timeout=10)
            except Exception:  # an earlier job's ledger, ending itself
                continue
            if len(holders) >= want and all(actor_state(h) == "ALIVE" for h in holders):
                return holders
        time.sleep(0.2)
    raise AssertionError("the actors never registered with the slot ledger")


@pytest.mark.timeout(240)
def test_killed_actor_still_completes_every_row_exactly_once(ray_address, fleet, parquet_dir) -> None:
    from ray._private import state

    a, b, config = fleet
    a.latency = b.latency = 0.1                      # slow enough to kill an actor mid-batch
    result: dict[str, object] = {}

    def consume() -> None:
        try:
            ds = ray.data.read_parquet(str(parquet_dir)).repartition(8)  # blocks for both actors
            result["out"] = ds.map_batches(
                corral.ray.Processor, batch_size=20, batch_format="pandas", num_cpus=0.5,
                compute=ray.data.ActorPoolStrategy(size=2),
                fn_constructor_kwargs=_processor_kwargs(config, 2)).to_pandas()
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=consume)
    worker.start()
    holders = _ledger_holders()
    assert a.wait_until(lambda s: s.completed >= 20, timeout=60)   # mid-job: work under way
    victim = next(iter(holders))
    os.kill(state.actors(victim)["Pid"], signal.SIGKILL)
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    out = result["out"]
    assert state.actors(victim)["NumRestarts"] >= 1   # Ray did restart the killed actor
    assert sorted(out["id"].tolist()) == list(range(240))            # every row, exactly once
    sent_ok = out[out["text"].str.len() > 0]
    assert sent_ok["response"].notna().all()


def test_ledger_gives_a_restarted_actor_its_index_and_reclaims_dead_ones(ray_address) -> None:
    from corral.ray.ledger import SlotLedger

    @ray.remote(num_cpus=0)
    class Dummy:
        def me(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    ledger = SlotLedger.remote(2)
    try:
        dummy = Dummy.remote()
        dead = ray.get(dummy.me.remote())
        assert ray.get(ledger.claim.remote(dead)) == 0
        assert ray.get(ledger.claim.remote("live-b")) == 1
        assert ray.get(ledger.claim.remote(dead)) == 0        # the same actor (restarted): same index
        assert ray.get(ledger.claim.remote("live-c")) is None  # both held by live actors: wait
        ray.kill(dummy)
        deadline = time.monotonic() + 20
        while actor_state(dead) != "DEAD" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.get(ledger.claim.remote("live-c")) == 0     # a replacement takes the dead one's
        assert ray.get(ledger.holding.remote()) == {"live-b": 1, "live-c": 0}
    finally:
        ray.kill(ledger)


@pytest.mark.timeout(240)
def test_corral_run_ray_survives_a_killed_actor(ray_address, fleet, parquet_dir, tmp_path) -> None:
    """SIGKILL a worker actor of a running `corral run --ray`: Ray restarts it, its partition is
    written from the start again, and every row is in the output exactly once."""
    from ray._private import state

    a, b, config = fleet
    a.latency = b.latency = 0.1
    cfg = tmp_path / "cluster.toml"
    _write_toml(cfg, config)
    out_dir = tmp_path / "out"
    env = {**os.environ, "CORRAL_LOG_INTERVAL": "1"}
    env.pop("OLLAMA_HOST", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "run", str(parquet_dir), "--ray", ray_address, "--config", str(cfg),
         "--prompt", TEMPLATE, "--output-format", "jsonl", "-o", str(out_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holders = _ledger_holders()
        assert a.wait_until(lambda s: s.completed >= 10, timeout=60)
        victim = next(iter(holders))
        os.kill(state.actors(victim)["Pid"], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "3 partition(s) written, 240 rows" in stderr, stderr
    assert state.actors(victim)["NumRestarts"] >= 1
    rows = [json.loads(line) for p in sorted(out_dir.glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(240))          # exactly once
    assert sorted(p.name for p in out_dir.glob("*.jsonl")) == ["part0.jsonl", "part1.jsonl", "part2.jsonl"]


def test_flags_of_the_other_path_are_refused_not_ignored(tmp_path: Path) -> None:
    ray_only = corral_cli("run", "prompts.jsonl", "--prompt", "Say {text}", "-o", str(tmp_path / "o.jsonl"))
    assert ray_only.returncode == 2 and "go with --ray" in ray_only.stderr
    one_process_only = corral_cli("run", str(tmp_path), "--ray", "local", "--retry-failed", "--json",
                                  "-o", str(tmp_path / "out"))
    assert one_process_only.returncode == 2
    assert "--ray does not take --json, --retry-failed" in one_process_only.stderr


def test_partition_names_never_collide(tmp_path: Path) -> None:
    from corral.ray.job import discover, partition_names

    for rel in ("in/a.csv", "in/a.jsonl", "in/2024/b.parquet", "in/c.parquet", "in/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files = discover([str(tmp_path / "in")])
    assert [f.name for f in files] == ["b.parquet", "a.csv", "a.jsonl", "c.parquet"]   # no .txt
    assert partition_names(files, "jsonl") == ["2024__b.jsonl", "a.csv.jsonl", "a.jsonl.jsonl", "c.jsonl"]
    assert discover([str(tmp_path / "in" / "*.parquet")]) == [(tmp_path / "in" / "c.parquet").resolve()]
    with pytest.raises(UsageError, match="no file matches"):
        discover([str(tmp_path / "nothing*.csv")])


@pytest.mark.timeout(180)
def test_corral_run_ray_reads_csv_and_jsonl(ray_address, fleet, tmp_path) -> None:
    _, _, config = fleet
    folder = tmp_path / "in"
    folder.mkdir()
    pd.DataFrame({"id": ["a1", "a2", "a3"], "text": ["one", "two", ""]}).to_csv(folder / "a.csv", index=False)
    (folder / "b.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "text": f"line {i}"}) + "\n"
                                            for i in range(4)))
    cfg = tmp_path / "cluster.toml"
    _write_toml(cfg, config)
    out = folder / "out"   # inside the input folder: its files must never become inputs
    args = ("run", str(folder), "--ray", ray_address, "--config", str(cfg), "--prompt", "Say {text}",
            "--output-format", "jsonl", "-o", str(out))
    result = corral_cli(*args, timeout=150)
    assert result.returncode == 0, result.stderr
    assert "corral: 2 partition(s), 2 already complete" in corral_cli(*args, timeout=150).stderr
    a = [json.loads(x) for x in (out / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "b.jsonl").read_text().splitlines()]
    assert [r["id"] for r in a] == ["a1", "a2", "a3"] and [r["id"] for r in b] == ["b0", "b1", "b2", "b3"]
    assert json.loads(a[0]["response"]) == {"label": "short"} and a[0]["error"] is None
    assert a[2]["response"] is None and a[2]["error"] == "not sent: empty text"
    assert b[3]["model"] == "llama3.2" and b[3]["error"] is None


@pytest.mark.timeout(180)
def test_big_parquet_files_are_cut_at_row_groups(ray_address, fleet, tmp_path) -> None:
    """A file of 5 row groups with --partition-rows 100 becomes 3 partitions (2+2+1 groups), each
    its own resumable output; together they are the file's rows, each once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, _, config = fleet
    folder = tmp_path / "in"
    folder.mkdir()
    frame = pd.DataFrame({"id": range(240), "text": [f"row {i}" for i in range(240)]})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "big.parquet", row_group_size=50)
    frame.iloc[:30].to_parquet(folder / "small.parquet")
    cfg = tmp_path / "cluster.toml"
    _write_toml(cfg, config)
    out_dir = tmp_path / "out"
    args = ("run", str(folder), "--ray", ray_address, "--config", str(cfg), "--prompt", "Say {text}",
            "--partition-rows", "100", "-o", str(out_dir))
    result = corral_cli(*args, timeout=150)
    assert result.returncode == 0, result.stderr
    assert "4 partition(s) from 2 file(s), 0 already complete" in result.stderr
    names = sorted(p.name for p in out_dir.glob("*.parquet"))
    assert names == ["big.rg00000-00001.parquet", "big.rg00002-00003.parquet", "big.rg00004-00004.parquet",
                     "small.parquet"]
    big = pd.concat([pd.read_parquet(out_dir / n) for n in names[:3]], ignore_index=True)
    assert big["id"].tolist() == list(range(240)) and big["error"].isna().all()
    assert [len(pd.read_parquet(out_dir / n)) for n in names] == [100, 100, 40, 30]
    (out_dir / names[1]).unlink()
    again = corral_cli(*args, timeout=150)
    assert "4 partition(s) from 2 file(s), 3 already complete" in again.stderr
    assert pd.read_parquet(out_dir / names[1])["id"].tolist() == list(range(100, 200))


def _gold_table(folder: Path) -> list[str]:
    """A CSV whose own columns are named like corral's answers: gold labels in `label` (a JSON key
    in Python) and a human's answer in `response` (the CLI's answer column)."""
    gold = ["pos", "neg", "pos", "neg"]
    pd.DataFrame({"id": [1, 2, 3, 4], "text": ["one", "two", "three", "four"], "label": gold,
                  "response": ["human"] * 4}).to_csv(folder / "gold.csv", index=False)
    return gold


@pytest.mark.timeout(200)
def test_column_prefix_keeps_the_tables_own_columns_on_ray(ray_address, fleet, tmp_path) -> None:
    _, _, config = fleet
    folder = tmp_path / "in"
    folder.mkdir()
    gold = _gold_table(folder)
    cfg = tmp_path / "cluster.toml"
    _write_toml(cfg, config)
    args = ("run", str(folder), "--ray", ray_address, "--config", str(cfg), "--prompt", TEMPLATE,
            "--output-format", "jsonl")
    clash = corral_cli(*args, "-o", str(tmp_path / "clash"), timeout=150)
    assert clash.returncode == 2 and "Traceback" not in clash.stderr, clash.stderr
    assert "response" in clash.stderr and "--column-prefix" in clash.stderr
    assert not list((tmp_path / "clash").glob("*.jsonl"))
    done = corral_cli(*args, "--column-prefix", "llm_", "-o", str(tmp_path / "out"), timeout=150)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in (tmp_path / "out" / "gold.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == gold and [r["response"] for r in rows] == ["human"] * 4
    assert [json.loads(r["llm_response"]) for r in rows] == [{"label": "short"}] * 4
    assert {"llm_model", "llm_error"} <= set(rows[0])

    # The same through the Python front, one batch at a time as Ray Data hands them over.
    frame = pd.read_csv(folder / "gold.csv")
    kwargs = {"config": config, "text_column": "text", "prompt_template": TEMPLATE, "json_keys": ["label"]}
    with pytest.raises(UsageError, match="column_prefix"):
        corral.ray.Processor(**kwargs)(frame)
    out = corral.ray.Processor(**kwargs, column_prefix="llm_")(frame)
    assert list(out["label"]) == gold and list(out["llm_label"]) == ["short"] * 4
    assert list(out["response"]) == ["human"] * 4


@pytest.mark.timeout(200)
def test_the_key_never_leaves_a_ray_run(ray_address, tmp_path) -> None:
    """`corral run --ray` against a server that quotes the key back in its errors (whole, with its
    end hidden, after 600 characters): no file written and no line printed holds 8+ of its characters."""
    from tests.fakes import FakeServer
    from tests.scenarios_files import _QUOTES, KEY, key_runs

    folder = tmp_path / "in"
    folder.mkdir()
    pd.DataFrame({"id": range(12), "text": [f"t {i}" for i in range(12)]}).to_csv(folder / "t.csv", index=False)
    printed: list[str] = []
    with FakeServer(api="openai", api_key=KEY, slots=4, responder=_responder) as server:
        (tmp_path / "c.toml").write_text(
            f'model = "llama3.2"\n[[servers]]\nurl = "{server.url}"\napi = "openai"\n'
            'api_key_env = "CORRAL_TEST_KEY"\nmax_concurrency = 2\n', encoding="utf-8")
        for i, quote in enumerate(_QUOTES):
            server.fail_message = quote
            server.fail_next(3, status=400)
            result = corral_cli("run", str(folder), "--ray", ray_address, "--config", str(tmp_path / "c.toml"),
                                "--prompt", TEMPLATE, "--output-format", "jsonl", "-vv",
                                "-o", str(tmp_path / f"out{i}"), env={"CORRAL_TEST_KEY": KEY}, timeout=150)
            assert result.returncode in (0, 1), result.stderr
            printed += [result.stdout, result.stderr]
        assert server.requests, "the key never reached the server"
        # The key's variable travels to the actors with the job (Ray's runtime_env): this shell
        # has it, the Ray nodes need not. Without it anywhere: one line, no traceback.
        keyless = corral_cli("run", str(folder), "--ray", ray_address, "--config", str(tmp_path / "c.toml"),
                             "--prompt", TEMPLATE, "-o", str(tmp_path / "keyless"), timeout=150)
        assert keyless.returncode == 1 and "Traceback" not in keyless.stderr, keyless.stderr
        assert "is $CORRAL_TEST_KEY set?" in keyless.stderr
        printed += [keyless.stdout, keyless.stderr]
    errors = [json.loads(x)["error"] for i in range(len(_QUOTES))
              for x in (tmp_path / f"out{i}" / "t.jsonl").read_text().splitlines()]
    assert any(errors), "no row carried the server's error"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaks = {str(p): key_runs(p.read_bytes()) for p in files}
    leaks.update({f"printed {i}": key_runs(text) for i, text in enumerate(printed)})
    assert not {name: n for name, n in leaks.items() if n}
