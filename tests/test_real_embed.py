"""Real embeddings: llama.cpp's server in embedding mode with the bundled SmolLM2-135M, on the CPU."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import corral
from corral import ServerSpec
from tests.conftest import corral as corral_cli

pytestmark = pytest.mark.slow
pytest.importorskip("xllamacpp", reason="the embedded server needs the corral[local] extra")

TEXTS = [
    "The parliament passed the budget after a long debate.",
    "A new vaccine reduced hospital admissions by half.",
    "The striker scored twice in the final minutes.",
    "Interest rates will stay unchanged this quarter.",
    "The parliament passed the budget after a long debate.",  # identical to the first
    "Heavy rain flooded the old town overnight.",
    "The minister resigned over the housing scandal.",
    "Researchers mapped the genome of a rare orchid.",
]


@pytest.fixture(scope="module")
def llama():
    from corral.local import LocalServer

    with LocalServer(n_parallel=2, embedding=True, threads=2) as server:
        yield server


def _one(url: str, text: str) -> np.ndarray:
    """The server's own answer for one text, asked directly, as the Ollama Batch Inference Guide does."""
    request = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(
        {"model": "smollm2", "input": text}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return np.asarray(json.load(answer)["data"][0]["embedding"], dtype=np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embed_on_the_real_server(llama):
    spec = ServerSpec(llama.url, api="openai")
    vectors = corral.embed(TEXTS, model=llama.model, servers=[spec], batch_size=3)
    assert vectors.shape == (len(TEXTS), 576) and vectors.dtype == np.float32
    assert np.all(np.linalg.norm(vectors, axis=1) > 0) and not np.isnan(vectors).any()
    assert np.array_equal(vectors[0], vectors[4])  # identical texts, one vector
    # Input order: each row is its own text's vector (asked alone), and not its neighbour's.
    for i in (1, 3, 6):
        alone = _one(llama.url, TEXTS[i])
        assert _cos(vectors[i], alone) > 0.999
        assert _cos(vectors[i], alone) > _cos(vectors[i + 1], alone)
    # Batched differently, without the store: the same vectors (up to float noise).
    again = corral.embed(TEXTS[::-1], model=llama.model, servers=[spec], batch_size=8)[::-1]
    assert all(_cos(a, b) > 0.999 for a, b in zip(vectors, again))


def test_a_text_too_long_for_the_server_fails_alone(llama):
    texts = ["short and fine", "word " * 3000, "also fine"]
    vectors = corral.embed(texts, model=llama.model, servers=[ServerSpec(llama.url, api="openai")],
                           batch_size=3, on_error="nan")
    assert np.isnan(vectors[1]).all() and not np.isnan(vectors[[0, 2]]).any()
    with pytest.raises(corral.EmbedError, match="too large to process"):
        corral.embed(texts, model=llama.model, servers=[ServerSpec(llama.url, api="openai")])


def test_corral_embed_local_end_to_end(tmp_path):
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}).to_csv(
        tmp_path / "notes.csv", index=False)
    proc = corral_cli("embed", "notes.csv", "--local", "--id-column", "doc_id", "-o", "vectors.parquet",
                      "--batch-size", "4", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "8 rows -> vectors.parquet (576-dim float32): 7 embedded, 0 from the store, 1 duplicate," in proc.stderr
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.column("doc_id").to_pylist() == [f"d{i}" for i in range(len(TEXTS))]
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (8, 576) and np.all(np.linalg.norm(vectors, axis=1) > 0)
