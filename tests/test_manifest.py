"""The run manifest and `corral run --reproduce`, through the CLI and the Python API, on fake servers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import corral
from corral import ServerSpec
from corral.manifest import redact_argv
from tests.conftest import corral as corral_cli
from tests.conftest import read_jsonl, write_jsonl

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _stored_manifests(store: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(store)
    try:
        return [json.loads(m) for (m,) in db.execute("SELECT manifest FROM runs ORDER BY id") if m]
    finally:
        db.close()


def test_run_manifest_says_which_models_servers_settings_and_counts(tmp_path: Path,
                                                                    fake_ollama_factory) -> None:
    ollama = fake_ollama_factory(slots=2, version="0.6.2")
    llamacpp = fake_ollama_factory(api="openai", llamacpp=True, slots=2, version="0.0")
    vllm = fake_ollama_factory(api="openai", version="0.8.5")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "cluster.toml").write_text(
        'model = "llama3.2"\n'
        f'[[servers]]\nurl = "{ollama.url}"\napi = "ollama"\n'
        f'[[servers]]\nurl = "{llamacpp.url}"\napi = "openai"\nname = "cpp"\n'
        f'[[servers]]\nurl = "{vllm.url}"\napi = "openai"\nname = "vllm"\n'
        '[[servers]]\nurl = "http://127.0.0.1:9"\napi = "ollama"\nname = "down"\n')
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"label {i}"} for i in range(30)])
    proc = corral_cli("run", "p.jsonl", "-c", "cluster.toml", "--system", "Answer in JSON.",
                      "--schema", "@schema.json", "--temperature", "0", "--seed", "42", "--num-ctx", "2048",
                      "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "manifest in out.jsonl.manifest.json" in proc.stderr
    m = _manifest(tmp_path / "out.jsonl.manifest.json")

    assert m["kind"] == "run" and m["status"] == "complete" and m["corral_version"] == corral.__version__
    assert m["command"] == ["corral", "run", "p.jsonl", "-c", "cluster.toml", "--system", "Answer in JSON.",
                            "--schema", "@schema.json", "--temperature", "0", "--seed", "42", "--num-ctx",
                            "2048", "-o", "out.jsonl"]
    assert m["input"] == {"path": "p.jsonl", "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(),
                          "bytes": prompts.stat().st_size, "rows": 30}
    job = m["job"]
    assert job["models"] == ["llama3.2"] and job["system"] == "Answer in JSON." and job["format"] == SCHEMA
    assert job["options"] == {"temperature": 0.0, "seed": 42, "num_ctx": 2048}

    servers = {s["label"]: s for s in m["servers"]}
    olla = servers[f"127.0.0.1:{ollama.port}"]
    assert (olla["kind"], olla["version"]) == ("ollama", "0.6.2")
    facts = olla["models"]["llama3.2"]
    assert facts["digest"] == hashlib.sha256(b"llama3.2:latest").hexdigest()  # the fake's /api/tags
    assert facts["details"]["quantization_level"] == "Q4_K_M" and facts["context_length"] == 131072
    assert facts["template_sha256"].startswith("sha256:")
    cpp = servers["cpp"]
    assert (cpp["kind"], cpp["version"]) == ("llama.cpp", "b0000-fake-0.0")
    assert cpp["models"]["llama3.2"]["model_file"] == "llama3.2.Q4_K_M.gguf"
    assert cpp["models"]["llama3.2"]["digest"].startswith("fingerprint:")
    assert (servers["vllm"]["kind"], servers["vllm"]["version"]) == ("vllm", "0.8.5")
    assert servers["down"]["reachable"] is False and "unreachable" in servers["down"]["error"]
    assert any("llama3.2 is not the same on every server" in w for w in m["warnings"])

    rows = read_jsonl(tmp_path / "out.jsonl")
    counts = m["counts"]
    assert counts["ok"] == 30 and counts["failed"] == 0 and counts["sent"] == 30 and counts["cached"] == 0
    assert m["tokens"] == {"prompt": sum(r["prompt_eval_count"] for r in rows),
                           "completion": sum(r["eval_count"] for r in rows)}
    assert sum(s["ok"] for s in m["per_server"]) == 30
    assert m["engine"]["content_retries"] is None  # no answer check of its own (only JSON's)
    assert isinstance(m["wall_seconds"], (int, float))
    assert all(isinstance(m[k], str) and m[k][:2] == "20" for k in ("started_at", "finished_at"))  # ISO dates
    assert _stored_manifests(tmp_path / "out.jsonl.corral.db") == [m]  # kept in the store too

    again = corral_cli("run", "p.jsonl", "-c", "cluster.toml", "--system", "Answer in JSON.",
                       "--schema", "@schema.json", "--temperature", "0", "--seed", "42", "--num-ctx", "2048",
                       "-o", "out.jsonl", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = _manifest(tmp_path / "out.jsonl.manifest.json")
    assert resumed["counts"]["cached"] == 30 and resumed["counts"]["sent"] == 0
    assert len(_stored_manifests(tmp_path / "out.jsonl.corral.db")) == 2


def test_secrets_never_reach_the_manifest_or_the_store(tmp_path: Path, fake_ollama_factory) -> None:
    secured = fake_ollama_factory(api="openai", api_key="s3cret-key-123")
    plain = fake_ollama_factory()
    (tmp_path / "c.toml").write_text(
        f'[[servers]]\nurl = "{secured.url}"\napi = "openai"\napi_key_env = "CORRAL_TEST_KEY"\n')
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    proc = corral_cli("run", "p.jsonl", "-c", "c.toml", "-m", "llama3.2", "-o", "out.jsonl", cwd=tmp_path,
                      env={"CORRAL_TEST_KEY": "s3cret-key-123"})
    assert proc.returncode == 0, proc.stderr
    userinfo_url = plain.url.replace("http://", "http://bob:hunter2@")
    proc = corral_cli("run", "p.jsonl", "--server", userinfo_url, "-m", "llama3.2", "-o", "out2.jsonl",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path / "out.jsonl.manifest.json")
    assert m["servers"][0]["spec"]["api_key_env"] == "CORRAL_TEST_KEY"
    assert f"http://***@127.0.0.1:{plain.port}" in " ".join(_manifest(tmp_path / "out2.jsonl.manifest.json")["command"])
    written = [p for p in tmp_path.iterdir() if ".manifest.json" in p.name or ".corral.db" in p.name]
    assert len(written) >= 4
    for path in written:
        data = path.read_bytes()
        assert b"s3cret-key-123" not in data and b"hunter2" not in data, path.name


def test_command_lines_are_redacted() -> None:
    argv = ["/venv/bin/corral", "run", "p.jsonl", "--api-key", "sk-1", "--hf-token=abc", "-O", "api_key=sk-2",
            "-O", "temperature=0", "--server", "https://me:pw@host:8000", "--max-tokens", "48",
            "--keep-alive", "5m", "--system", "Be brief."]
    assert redact_argv(argv) == ["corral", "run", "p.jsonl", "--api-key", "***", "--hf-token=***", "-O",
                                 "api_key=***", "-O", "temperature=0", "--server", "https://***@host:8000",
                                 "--max-tokens", "48", "--keep-alive", "5m", "--system", "Be brief."]


def test_reproduce_reruns_the_job_and_reports_changed_digests(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(12)])
    first = corral_cli("run", "p.jsonl", "-s", server.url, "-m", "llama3.2", "--temperature", "0",
                       "--seed", "1", "--system", "Be brief.", "-o", "out.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    server.reset_stats()

    same = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert server.completed == 12  # really sent again: a fresh store beside a fresh output
    _, body = server.requests[0]
    assert body["options"] == {"temperature": 0.0, "seed": 1}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "reproduce: 12 of 12 responses identical to the original run" in same.stderr
    assert "digest changed" not in same.stderr
    redo = _manifest(tmp_path / "out.reproduced.jsonl.manifest.json")
    assert redo["reproduction"]["identical"] == 12 and redo["reproduction"]["digest_changes"] == []
    assert redo["job"]["reproduces"] == "out.jsonl.manifest.json"
    assert [r["response"] for r in read_jsonl(tmp_path / "out.reproduced.jsonl")] == \
           [r["response"] for r in read_jsonl(tmp_path / "out.jsonl")]

    server.revisions["llama3.2"] = "requantised"  # same name, other weights: `ollama pull` brought a new build
    changed = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", "-o", "again.jsonl", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    old = hashlib.sha256(b"llama3.2:latest").hexdigest()[:12]
    new = hashlib.sha256(b"llama3.2:latest@requantised").hexdigest()[:12]
    assert f"model llama3.2: digest changed from {old} to {new}" in changed.stderr
    assert _manifest(tmp_path / "again.jsonl.manifest.json")["reproduction"]["digest_changes"]

    (tmp_path / "p.jsonl").write_text('{"prompt": "something else"}\n')
    moved = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", "-o", "third.jsonl", cwd=tmp_path)
    assert "the input file p.jsonl has changed since the original run" in moved.stderr


def test_reproduce_on_llama_cpp_sees_another_model_file(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(api="openai", llamacpp=True, slots=2)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(4)])
    first = corral_cli("run", "p.jsonl", "-s", server.url, "--api", "openai", "-m", "llama3.2",
                       "-o", "out.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    server.revisions["llama3.2"] = "v2"  # another GGUF file behind the same alias
    again = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "model llama3.2: digest changed from fingerprint:" in again.stderr


@pytest.mark.parametrize("extra, fragment", [
    (("--model", "other"), "--reproduce takes the job from the manifest; drop --model"),
    (("p.jsonl",), "drop INPUT"),
])
def test_reproduce_usage_errors(tmp_path: Path, fake_ollama, extra: tuple[str, ...], fragment: str) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}])
    assert corral_cli("run", "p.jsonl", "-s", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl",
                      cwd=tmp_path).returncode == 0
    proc = corral_cli("run", "--reproduce", "out.jsonl.manifest.json", *extra, cwd=tmp_path)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr


def test_table_commands_and_functions_write_manifests(tmp_path: Path, fake_ollama_factory) -> None:
    def fields(body: dict[str, Any]) -> str:
        return json.dumps({"City": "Paris", "Occasion": "visit"})

    server = fake_ollama_factory(models=("llama3.2", "mistral"), responder=fields)
    table = pd.DataFrame({"title_en": ["State visit to Paris", "Speech", "Dinner"],
                          "City": ["", "Rome", ""]})
    table.to_csv(tmp_path / "events.csv", index=False)
    proc = corral_cli("fill", "events.csv", "-o", "filled.csv", "--fields", "City,Occasion",
                      "--col-map", "City=City", "-s", server.url, "-m", "llama3.2", "--seed", "3",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = _manifest(tmp_path / "filled.csv.manifest.json")
    assert m["kind"] == "fill" and m["input"]["rows"] == 3 and m["status"] == "complete"
    assert m["input"]["sha256"] == hashlib.sha256((tmp_path / "events.csv").read_bytes()).hexdigest()
    assert m["job"]["json_fields"] == ["City", "Occasion"] and m["job"]["col_map"] == {"City": "City"}
    assert "{text}" in m["job"]["prompt_template"] and m["job"]["options"] == {"seed": 3}
    assert m["counts"]["sent"] == 3 and m["output"]["path"] == "filled.csv"
    assert m["engine"]["content_retries"] == 2  # the table checks its answers: its re-asks are kept
    assert _stored_manifests(tmp_path / "filled.csv.corral.db") == [m]

    corral.fill_missing_fields_from_csv(str(tmp_path / "events.csv"), str(tmp_path / "api.csv"),
                                        json_fields=("City",), servers=[server.url], progress=False)
    assert _manifest(tmp_path / "api.csv.manifest.json")["kind"] == "fill"

    out = corral.run_analysis(table, text_column="title_en", model_names=["llama3.2", "mistral"],
                              json_keys=["City"], fanout=True, servers=[server.url], progress=False,
                              store=tmp_path / "analysis.db", manifest=tmp_path / "analysis.manifest.json")
    m = _manifest(tmp_path / "analysis.manifest.json")
    assert m["kind"] == "run_analysis" and m["input"]["kind"] == "dataframe" and m["input"]["rows"] == 3
    assert m["job"]["fanout"] is True and m["job"]["json_keys"] == ["City"]
    assert m["agreement"]["keys"]["City"]["pairs"][0]["percent_agreement"] == 100.0
    assert list(out["City_llama3.2"]) == ["Paris"] * 3
    assert _stored_manifests(tmp_path / "analysis.db") == [m]


def test_batch_generate_keeps_a_manifest(tmp_path: Path, fake_ollama) -> None:
    prompts = ["What is Python?", "Explain machine learning."]
    results = corral.batch_generate(prompts, model="llama3.2", servers=[ServerSpec(fake_ollama.url)],
                                    temperature=0, seed=1, store=tmp_path / "j.db",
                                    manifest=tmp_path / "batch.manifest.json")
    assert all(r["success"] for r in results)
    m = _manifest(tmp_path / "batch.manifest.json")
    assert m["kind"] == "batch_generate" and m["input"]["rows"] == 2 and len(m["input"]["sha256"]) == 64
    assert m["job"]["options"] == {"temperature": 0, "seed": 1} and m["counts"]["ok"] == 2
    assert m["servers"][0]["models"]["llama3.2"]["digest"]
    assert _stored_manifests(tmp_path / "j.db") == [m]
