"""Real inference: llama.cpp's server (xllamacpp) with the bundled SmolLM2-135M, on the CPU.

One server is shared by the module; `--local` is tested separately because it owns its server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import corral
from corral import ServerSpec
from tests.conftest import ROOT, read_jsonl, write_jsonl
from tests.conftest import corral as corral_cli

pytestmark = pytest.mark.slow
pytest.importorskip("xllamacpp", reason="the embedded server needs the corral[local] extra")

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]},
                   "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
}


@pytest.fixture(scope="module")
def llama():
    from corral.local import LocalServer

    with LocalServer(n_parallel=4) as server:
        yield server


def _run(tmp_path: Path, llama, *extra: str, name: str = "out.jsonl"):
    return corral_cli("run", str(ROOT / "examples" / "prompts.jsonl"), "--server", llama.url,
                      "--api", "openai", "-m", llama.model, "--max-tokens", "24", "--temperature", "0",
                      "--seed", "7", "-o", name, *extra, cwd=tmp_path, timeout=600)


def test_corral_run_end_to_end_on_the_real_server(tmp_path: Path, llama) -> None:
    proc = _run(tmp_path, llama)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 24
    assert all(r["success"] and r["response"].strip() for r in rows)
    assert all(0 < r["eval_count"] <= 24 and r["prompt_eval_count"] > 5 for r in rows)
    assert rows[0]["prompt"].startswith("Analyze the reasons")
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    (server,) = manifest["servers"]
    assert server["kind"] == "llama.cpp" and server["version"]
    facts = server["models"][llama.model]
    assert facts["model_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and facts["ftype"] == "Q4_1"
    assert facts["digest"].startswith("fingerprint:") and facts["meta"]["n_params"] > 100_000_000
    assert manifest["job"]["options"] == {"temperature": 0.0, "seed": 7, "num_predict": 24}
    # Reproduce: same seed at temperature 0 into a fresh store: the same text, byte for byte.
    again = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "reproduce: 24 of 24 responses identical to the original run" in again.stderr
    assert "digest changed" not in again.stderr
    redo = read_jsonl(tmp_path / "out.reproduced.jsonl")
    assert [r["response"].encode() for r in redo] == [r["response"].encode() for r in rows]


def test_batch_generate_on_the_real_server(llama) -> None:
    prompts = [f"Say a word that rhymes with number {i}." for i in range(20)]
    results = corral.batch_generate(prompts, model=llama.model,
                                    servers=[ServerSpec(llama.url, api="openai")],
                                    temperature=0, seed=3, num_predict=16)
    assert [r["prompt"] for r in results] == prompts
    assert all(r["success"] and r["response"] for r in results), [r["error"] for r in results]
    assert all(r["eval_count"] and r["eval_duration"] for r in results)


def test_json_schema_answer_is_valid_json_with_the_keys(tmp_path: Path, llama) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_jsonl(tmp_path / "reviews.jsonl", [
        {"prompt": "Classify the sentiment of: 'I loved this film, wonderful acting.'"},
        {"prompt": "Classify the sentiment of: 'Terrible food and rude staff.'"},
        {"prompt": "Classify the sentiment of: 'Best purchase I made this year.'"},
    ])
    proc = corral_cli("run", "reviews.jsonl", "--server", llama.url, "--api", "openai", "-m", llama.model,
                      "--schema", "@schema.json", "--temperature", "0", "--max-tokens", "64",
                      "-o", "labels.jsonl", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for row in read_jsonl(tmp_path / "labels.jsonl"):
        answer = json.loads(row["response"])
        assert set(answer) >= {"label", "confidence"}
        assert answer["label"] in ("positive", "negative")
        assert isinstance(answer["confidence"], (int, float))


def test_local_flag_runs_the_embedded_model_and_stops_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2 + 2?"}, {"prompt": "Name a colour."}])
    children_before = _local_children()
    proc = corral_cli("run", "p.jsonl", "--local", "--max-tokens", "12", "-o", "out.jsonl", "-v",
                      cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["model"] for r in rows] == ["smollm2", "smollm2"]
    assert all(r["success"] and r["server"] == "local" for r in rows)
    assert "starting the embedded llama.cpp server" in proc.stderr
    # The child server is gone: no process is left running our model.
    assert _local_children() - children_before == set()


def _local_children() -> set[str]:
    """Embedded servers started from this checkout's Python (other checkouts on the machine may be
    running their own tests)."""
    return {p for p in os.listdir("/proc")
            if p.isdigit() and "_local_child" in (cmd := _cmdline(p)) and cmd.startswith(sys.prefix)}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


LABEL_SCHEMA = {"type": "object", "required": ["label"],
                "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}}}


def test_run_analysis_fanout_over_two_real_servers_with_constrained_json(tmp_path: Path) -> None:
    """Two llama.cpp servers under two model names, as a config lists them; every answer is valid
    JSON under the schema because the server decodes with it. One thread each: two llama.cpp
    processes spinning two threads each on two cores slow both down tenfold."""
    import pandas as pd

    from corral.local import LocalServer

    reviews = pd.DataFrame({"review": [
        "I loved this film, wonderful acting.", "Terrible food and rude staff.",
        "Best purchase I made this year.", "It broke after two days.",
    ]})
    ask = dict(text_column="review", model_names=["smol-a", "smol-b"], json_schema=LABEL_SCHEMA,
               prompt_template="Is this review positive or negative? Review: {text}", progress=False,
               temperature=0, seed=5, num_predict=24)
    with LocalServer(n_parallel=2, alias="smol-a", threads=1) as a, \
            LocalServer(n_parallel=2, alias="smol-b", threads=1) as b:
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'[[servers]]\nurl = "{a.url}"\napi = "openai"\nmodels = ["smol-a"]\n\n'
            f'[[servers]]\nurl = "{b.url}"\napi = "openai"\nmodels = ["smol-b"]\n')
        out = corral.run_analysis(reviews, fanout=True, config=str(config), **ask)
        split = corral.run_analysis(reviews, config=str(config), workers=1, **ask)
    for model in ("smol-a", "smol-b"):
        assert out[f"error_{model}"].isna().all(), out[f"error_{model}"].tolist()
        assert set(out[f"label_{model}"]) <= {"positive", "negative"}
        assert all(json.loads(text)["label"] == label
                   for text, label in zip(out[f"response_{model}"], out[f"label_{model}"]))
    report = corral.agreement(out, key="label", models=["smol-a", "smol-b"])
    pair = report.keys["label"].pairs.iloc[0]
    assert pair["n"] == len(reviews) and 0 <= pair["percent_agreement"] <= 100
    assert split["error"].isna().all() and set(split["model"]) <= {"smol-a", "smol-b"}
    assert set(split["label"]) <= {"positive", "negative"}
