"""Embeddings: `corral.embed()` and `corral embed` against fake Ollama / OpenAI / llama.cpp servers.

Batching, the old-Ollama fallback, splitting a refused batch, resume from the store and from an
earlier output, identical texts sent once, output formats, and clear errors. Real vectors from the
real llama.cpp server are in test_real_llama.py.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corral
from corral import ServerSpec
from corral.embeddings import DimensionError, EmbedError
from tests.conftest import corral as corral_cli
from tests.conftest import read_jsonl
from tests.fakes import fake_embedding

MODEL = "nomic-embed-text"


@pytest.fixture
def ollama(fake_ollama_factory):
    """A fake Ollama serving the embedding model."""
    return fake_ollama_factory(models=(MODEL,))


def expected(texts: list[str], dim: int = 8) -> np.ndarray:
    return np.asarray([fake_embedding(t, dim) for t in texts], dtype=np.float32)


def sent_inputs(server) -> list[str]:
    """Every text the server was asked to embed, retries included."""
    out: list[str] = []
    for path, body in server.requests:
        if path in ("/api/embed", "/v1/embeddings"):
            raw = body.get("input")
            out += [raw] if isinstance(raw, str) else list(raw)
        elif path == "/api/embeddings":
            out.append(body["prompt"])
    return out


def write_corpus(path, n: int = 200, *, dup_every: int = 0, extra: dict | None = None) -> list[str]:
    texts = [f"document {i % dup_every if dup_every else i} about the budget" for i in range(n)]
    rows = {"id": [1000 + i for i in range(n)], "overview": texts, **(extra or {})}
    frame = pd.DataFrame(rows)
    if str(path).endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return texts


# -- the Python API ---------------------------------------------------------------------------------

def test_embed_batches_over_servers_in_input_order(fake_ollama_factory):
    fast = fake_ollama_factory(models=(MODEL,), latency=0.001)
    slow = fake_ollama_factory(models=(MODEL,), latency=0.02)
    texts = [f"speech number {i}" for i in range(300)]
    vectors = corral.embed(texts, model=MODEL, servers=[fast.url, slow.url], batch_size=16)
    assert vectors.dtype == np.float32 and vectors.shape == (300, 8)
    np.testing.assert_allclose(vectors, expected(texts), rtol=1e-6)
    batches = [body["input"] for s in (fast, slow) for _, body in s.requests]
    assert all(1 <= len(b) <= 16 for b in batches)
    # one request per batch, not one per text (a batch a slow server holds at the end may be
    # hedged: sent once more to the idle fast one)
    assert len({tuple(b) for b in batches}) == 300 // 16 + 1
    assert fast.requests and slow.requests  # both servers worked
    assert sorted(sent_inputs(fast) + sent_inputs(slow)) == sorted(texts)


def test_identical_texts_are_embedded_once(ollama):
    server = ollama
    texts = ["same text", "other", "same text", "other", "third"] * 40
    vectors = corral.embed(texts, model=MODEL, servers=[server.url], batch_size=4)
    assert sorted(sent_inputs(server)) == ["other", "same text", "third"]
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[0], vectors[-3])
    np.testing.assert_allclose(vectors, expected(texts), rtol=1e-6)


def test_old_ollama_without_api_embed_falls_back_once(fake_ollama_factory):
    old = fake_ollama_factory(models=(MODEL,), version="0.1.30")
    old.missing_paths = {"/api/embed"}
    texts = [f"t{i}" for i in range(40)]
    vectors = corral.embed(texts, model=MODEL, servers=[old.url], batch_size=8, concurrency=1)
    np.testing.assert_allclose(vectors, expected(texts), rtol=1e-6)
    assert old.path_counts["/api/embed"] == 1  # learnt once, not asked again for every batch
    assert old.path_counts["/api/embeddings"] == 40


def test_openai_servers_use_v1_embeddings_with_dimensions(fake_openai):
    texts = ["alpha", "beta", "gamma"]
    vectors = corral.embed(texts, model="llama3.2", servers=[ServerSpec(fake_openai.url, api="openai")],
                           dimensions=4, truncate=True)
    assert vectors.shape == (3, 4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    (path, body), = fake_openai.requests
    assert path == "/v1/embeddings" and body["dimensions"] == 4
    assert body["encoding_format"] == "base64"  # float32 bytes: nothing to parse
    assert "truncate" not in body  # an Ollama option no OpenAI server knows


def test_a_server_refusing_base64_is_asked_for_floats(fake_openai):
    fake_openai.base64_embeddings = False
    texts = [f"t{i}" for i in range(24)]
    vectors = corral.embed(texts, model="llama3.2", servers=[ServerSpec(fake_openai.url, api="openai")],
                           batch_size=4, concurrency=1)
    np.testing.assert_allclose(vectors, expected(texts), rtol=1e-6)
    formats = [body.get("encoding_format") for _, body in fake_openai.requests]
    assert formats == ["base64"] + [None] * 6  # refused once, then floats for every batch
    assert fake_openai.status_counts[400] == 1


def test_corral_run_passes_batch_embedding_lines_through(tmp_path, fake_openai):
    """OpenAI batch input lines for /v1/embeddings (corral run) come out as vLLM's output lines."""
    line = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "llama3.2", "input": ["alpha", "beta"]}}
    (tmp_path / "batch.jsonl").write_text(json.dumps(line) + "\n")
    proc = corral_cli("run", "batch.jsonl", "-s", fake_openai.url, "--api", "openai", "-o", "out.jsonl",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    data = row["response"]["body"]["data"]
    np.testing.assert_allclose([d["embedding"] for d in data], expected(["alpha", "beta"]), rtol=1e-6)


def test_ollama_gets_truncate_dimensions_and_keep_alive(fake_ollama):
    corral.embed(["a b c"], model="llama3.2", servers=[fake_ollama.url], truncate=False, dimensions=4,
                 keep_alive="30m", options={"num_ctx": 512})
    (path, body), = fake_ollama.requests
    assert path == "/api/embed"
    assert body["truncate"] is False and body["dimensions"] == 4 and body["keep_alive"] == "30m"
    assert body["options"] == {"num_ctx": 512}


def test_a_too_long_text_is_isolated_by_splitting(fake_openai):
    server = fake_openai
    server.llamacpp, server.max_context_tokens = True, 10
    texts = [f"short text {i}" for i in range(32)]
    texts[13] = "far too long " * 10
    vectors = corral.embed(texts, model="llama3.2", servers=[ServerSpec(server.url, api="openai")],
                           batch_size=32, on_error="nan")
    assert np.isnan(vectors[13]).all()
    ok = [i for i in range(32) if i != 13]
    np.testing.assert_allclose(vectors[ok], expected([texts[i] for i in ok]), rtol=1e-6)
    # 32 -> 16 -> 8 -> 4 -> 2 -> 1: the culprit's half is cut five times; no retries of a 500 that
    # says "too large", and the server is not benched for it.
    assert len(server.requests) == 1 + 2 * 5
    assert server.status_counts[500] == 6


def test_failures_raise_after_the_rest_is_done(fake_ollama):
    fake_ollama.max_context_tokens = 3
    texts = ["fine", "also fine", "one two three four five", ""]
    with pytest.raises(EmbedError, match=r"2 of 4 texts got no vector") as info:
        corral.embed(texts, model="llama3.2", servers=[fake_ollama.url], truncate=False)
    err = info.value
    assert [i for i, _ in err.errors] == [2, 3]
    assert "exceeds the context length" in err.errors[0][1] and err.errors[1][1] == "empty text"
    assert not np.isnan(err.vectors[:2]).any() and np.isnan(err.vectors[2:]).all()


def test_vectors_of_different_lengths_stop_the_job(fake_ollama_factory):
    a = fake_ollama_factory(models=(MODEL,), embedding_dim=8)
    b = fake_ollama_factory(models=(MODEL,), embedding_dim=12)
    with pytest.raises(DimensionError, match=r"12-dimensional.*8-dimensional|8-dimensional.*12-dimensional"):
        corral.embed([f"t{i}" for i in range(200)], model=MODEL, servers=[a.url, b.url], batch_size=4)


def test_store_resumes_across_calls(fake_ollama, tmp_path):
    store = tmp_path / "vectors.db"
    first = corral.embed([f"t{i}" for i in range(50)], model="llama3.2", servers=[fake_ollama.url],
                         store=store)
    fake_ollama.reset_stats()
    texts = [f"t{i}" for i in range(80)]
    both = corral.embed(texts, model="llama3.2", servers=[fake_ollama.url], store=store)
    assert sorted(sent_inputs(fake_ollama)) == sorted(f"t{i}" for i in range(50, 80))
    assert np.array_equal(both[:50], first)


def test_single_string_is_refused_with_a_hint():
    with pytest.raises(corral.UsageError, match=r"embed\(\[text\]"):
        corral.embed("just one", model="m", servers=["127.0.0.1:9"])


# -- the command ------------------------------------------------------------------------------------

def embed_cli(tmp_path, server, *args: str, api: str = "ollama"):
    return corral_cli("embed", "movies.parquet", "--text-column", "overview", "--model", MODEL,
                      "--server", server.url, "--api", api, "--progress", "log", *args, cwd=tmp_path)


def test_cli_parquet_output(tmp_path, fake_ollama_factory):
    server = fake_ollama_factory(models=(MODEL,), slots=2, latency=0.002)
    texts = write_corpus(tmp_path / "movies.parquet", 150, dup_every=100)
    proc = embed_cli(tmp_path, server, "-o", "vectors.parquet", "--batch-size", "20")
    assert proc.returncode == 0, proc.stderr
    assert "150 rows -> vectors.parquet (8-dim float32): 100 embedded" in proc.stderr
    assert "50 duplicates, 0 failed" in proc.stderr
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert table.column("id").to_pylist() == [1000 + i for i in range(150)]
    got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, expected(texts), rtol=1e-6)
    assert table.column("error").null_count == 150
    assert not (tmp_path / "vectors.parquet.part").exists()
    assert (tmp_path / "vectors.parquet.corral.db").exists()
    manifest = json.loads((tmp_path / "vectors.parquet.manifest.json").read_text())
    assert manifest["kind"] == "embed" and manifest["status"] == "complete"
    assert manifest["job"]["model"] == MODEL and manifest["job"]["batch_size"] == 20
    assert manifest["input"]["rows"] == 150 and len(manifest["input"]["sha256"]) == 64
    assert manifest["counts"]["embedded"] == 100 and manifest["counts"]["deduplicated"] == 50
    assert manifest["embedding"] == {"dim": 8, "dtype": "float32"}
    (server_facts,) = manifest["servers"]
    assert server_facts["models"][MODEL]["digest"] == hashlib.sha256(f"{MODEL}:latest".encode()).hexdigest()


def test_cli_npy_output_with_ids_and_errors(tmp_path, ollama):
    texts = write_corpus(tmp_path / "movies.csv", 30)
    frame = pd.read_csv(tmp_path / "movies.csv")
    frame.loc[4, "overview"] = None
    frame.to_csv(tmp_path / "movies.csv", index=False)
    proc = corral_cli("embed", "movies.csv", "--text-column", "overview", "-m", MODEL,
                      "-s", ollama.url, "-o", "vectors.npy", "--progress", "none", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # one row has no text
    assert "id=1004: no text" in proc.stderr
    array = np.load(tmp_path / "vectors.npy")
    ids = pd.read_parquet(tmp_path / "vectors.ids.parquet")
    # CSV cells are read as text (so "00123" keeps its zeros): the ids come back as strings.
    assert array.shape == (30, 8) and list(ids["id"]) == [str(i) for i in frame["id"]]
    assert np.isnan(array[4]).all() and ids.loc[4, "error"] == "no text"
    keep = [i for i in range(30) if i != 4]
    np.testing.assert_allclose(array[keep], expected([texts[i] for i in keep]), rtol=1e-6)


def test_cli_jsonl_output_with_chosen_id_columns_and_row_numbers(tmp_path, ollama):
    write_corpus(tmp_path / "movies.parquet", 5, extra={"title": list("abcde")})
    proc = embed_cli(tmp_path, ollama, "-o", "v.jsonl", "--id-column", "title,id")
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "v.jsonl")
    assert [(r["title"], r["id"]) for r in rows] == [(c, 1000 + i) for i, c in enumerate("abcde")]
    assert all(len(r["embedding"]) == 8 and r["error"] is None for r in rows)
    # Without an id column the row number is the id.
    pd.DataFrame({"overview": ["x", "y"]}).to_parquet(tmp_path / "movies.parquet")
    proc = embed_cli(tmp_path, ollama, "-o", "rows.jsonl")
    assert [r["row"] for r in read_jsonl(tmp_path / "rows.jsonl")] == [0, 1]


def test_cli_limit_then_full_run_sends_only_the_rest(tmp_path, ollama):
    texts = write_corpus(tmp_path / "movies.parquet", 100)
    proc = embed_cli(tmp_path, ollama, "-o", "v.parquet", "--limit", "30")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_metadata(tmp_path / "v.parquet").num_rows == 30
    ollama.reset_stats()
    proc = embed_cli(tmp_path, ollama, "-o", "v.parquet")
    assert proc.returncode == 0, proc.stderr
    assert "70 embedded, 30 from the store" in proc.stderr
    assert sorted(sent_inputs(ollama)) == sorted(texts[30:])
    assert pq.read_metadata(tmp_path / "v.parquet").num_rows == 100


def test_cli_skip_existing_trusts_the_output_without_a_store(tmp_path, ollama):
    texts = write_corpus(tmp_path / "movies.parquet", 60)
    assert embed_cli(tmp_path, ollama, "-o", "v.parquet", "--limit", "40").returncode == 0
    before = pq.read_table(tmp_path / "v.parquet").column("embedding").to_pylist()
    (tmp_path / "v.parquet.corral.db").unlink()
    ollama.reset_stats()
    proc = embed_cli(tmp_path, ollama, "-o", "v.parquet", "--skip-existing")
    assert proc.returncode == 0, proc.stderr
    assert sorted(sent_inputs(ollama)) == sorted(texts[40:])
    after = pq.read_table(tmp_path / "v.parquet").column("embedding").to_pylist()
    assert after[:40] == before and len(after) == 60


def test_cli_resumes_after_a_failed_run(tmp_path, ollama):
    """A server that breaks mid-job: the rows it finished are kept, the re-run sends the rest."""
    texts = write_corpus(tmp_path / "movies.parquet", 64)
    ollama.fail_next(2, status=400)  # the first two batches are refused (not retried)
    proc = embed_cli(tmp_path, ollama, "-o", "v.parquet", "--batch-size", "1", "-j", "1")
    assert proc.returncode == 1 and "2 row(s) have no vector" in proc.stderr
    ollama.reset_stats()
    proc = embed_cli(tmp_path, ollama, "-o", "v.parquet", "--retry-failed")
    assert proc.returncode == 0, proc.stderr
    assert sorted(sent_inputs(ollama)) == sorted(texts[:2])
    got = np.asarray(pq.read_table(tmp_path / "v.parquet").column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, expected(texts), rtol=1e-6)


def test_cli_usage_errors_are_one_line(tmp_path, fake_ollama):
    write_corpus(tmp_path / "movies.parquet", 3)
    proc = embed_cli(tmp_path, fake_ollama, "-o", "v.txt")
    assert proc.returncode == 2 and "use .parquet, .npy or .jsonl" in proc.stderr
    proc = corral_cli("embed", "movies.parquet", "--text-column", "nope", "-m", "llama3.2", "-s",
                      fake_ollama.url, "-o", "v.parquet", cwd=tmp_path)
    assert proc.returncode == 2 and "no column 'nope'" in proc.stderr, proc.stderr
    proc = corral_cli("embed", "movies.parquet", "--text-column", "overview", "-s", fake_ollama.url,
                      "-o", "v.parquet", cwd=tmp_path)
    assert proc.returncode == 2 and "--model" in proc.stderr
    proc = corral_cli("embed", "movies.parquet", "--text-column", "overview", "-m", "missing-model",
                      "-s", fake_ollama.url, "-o", "v.parquet", cwd=tmp_path)
    assert proc.returncode == 2 and "not on any live server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("v.parquet*.part"))


def test_cli_progress_counts_texts(tmp_path, fake_ollama_factory):
    server = fake_ollama_factory(models=(MODEL,), slots=1, latency=0.05)
    write_corpus(tmp_path / "movies.parquet", 120)
    proc = embed_cli(tmp_path, server, "-o", "v.parquet", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "/120 done" in line]
    assert lines and "texts/s" in lines[-1], proc.stderr


def test_store_records_the_run(tmp_path, ollama):
    import sqlite3

    write_corpus(tmp_path / "movies.parquet", 10)
    assert embed_cli(tmp_path, ollama, "-o", "v.parquet").returncode == 0
    with sqlite3.connect(tmp_path / "v.parquet.corral.db") as db:
        (counts,), = db.execute("SELECT counts FROM runs").fetchall()
        stored = db.execute("SELECT count(*), min(dim), max(length(vector)) FROM vectors").fetchone()
    assert json.loads(counts)["embedded"] == 10
    assert stored == (10, 8, 32)  # float32 bytes, not JSON


def test_cli_second_embed_on_the_same_store_is_refused(tmp_path, fake_ollama_factory):
    import subprocess
    import sys

    server = fake_ollama_factory(models=(MODEL,), slots=1, latency=0.05)
    write_corpus(tmp_path / "movies.parquet", 400)
    args = [sys.executable, "-m", "corral", "embed", "movies.parquet", "--text-column", "overview",
            "-m", MODEL, "-s", server.url, "-o", "v.parquet", "-b", "4", "--progress", "none"]
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait_until(lambda s: len(s.requests) >= 3, timeout=60)
        second = corral_cli(*args[3:], cwd=tmp_path)
        assert second.returncode == 2 and "in use by another corral process" in second.stderr
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert pq.read_metadata(tmp_path / "v.parquet").num_rows == 400
    assert sorted(sent_inputs(server)) == sorted(set(sent_inputs(server)))  # nothing sent twice
