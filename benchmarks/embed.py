#!/usr/bin/env python3
"""Embedding throughput: the Ollama Batch Inference Guide's way (one text per request, 10 concurrent)
against corral embed.

Prints figures; it is not a test. Each part measures both contenders side by side in one run, on the
same texts, alternating in rounds so a change of machine load hits both alike.

1. Client overhead (always): nginx answers with canned embeddings (768 floats per text), so the
   server costs ~nothing and the client is the bottleneck. The Ollama Batch Inference Guide's async
   loop (aiohttp, one text per request, a semaphore of 10) against ``corral.embed`` (32 texts per
   request): on Ollama's API (``/api/embeddings`` vs ``/api/embed``) and on the OpenAI-compatible
   one (``/v1/embeddings``; the loop gets JSON floats, corral asks for base64 float32, as vLLM and llama.cpp can send).
2. Memory (always): ``corral embed`` on a Parquet corpus of 10,240 and of 102,400 rows against the same
   nginx; the peak RSS of the CLI process should not grow with the corpus.
3. Real server (--real): the embedded llama.cpp server (SmolLM2-135M, embedding mode) on this CPU,
   the same 2,000 texts through the Ollama Batch Inference Guide's loop (``/v1/embeddings``, one
   text, 10 concurrent) and through ``corral.embed`` with its defaults.

Usage: .venv/bin/python benchmarks/embed.py [--texts 20480] [--real] [--real-texts 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Nginx  # noqa: E402  (the nginx harness of the throughput benchmark)

import corral  # noqa: E402
from corral import ServerSpec  # noqa: E402

DIM = 768
BATCH = 32
WORDS = ("the parliament budget vote health school reform minister court trade war peace law citizen "
         "tax election party economy climate energy housing police crime border treaty").split()


def corpus(n: int, seed: int = 0, words: tuple[int, int] = (8, 16)) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for i in range(n)]


def canned_locations(folder: Path) -> str:
    """nginx serves the canned answers from files (too long for a config string), POST included."""
    rng = random.Random(1)
    vector = [round(rng.uniform(-1, 1), 6) for _ in range(DIM)]
    one = {"embedding": vector}
    batch = {"model": "llama3.2", "embeddings": [vector] * BATCH, "total_duration": 1000,
             "load_duration": 10, "prompt_eval_count": BATCH * 12}
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the worker may run as nobody
    # OpenAI-compatible: floats for one text (what the Ollama Batch Inference Guide's loop asks),
    # base64 float32 for a batch (what corral asks); one nginx each, since both are POST /v1/embeddings.
    packed = base64.b64encode(struct.pack(f"<{DIM}f", *vector)).decode()
    openai_one = {"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0,
                                                             "embedding": vector}]}
    openai_batch = {"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    "data": [{"object": "embedding", "index": i, "embedding": packed} for i in range(BATCH)]}
    for name, answer in (("one.json", one), ("batch.json", batch), ("openai-one.json", openai_one),
                         ("openai-batch.json", openai_batch)):
        (folder / name).write_bytes(orjson.dumps(answer))
        (folder / name).chmod(0o644)
    # Static files answer POST with 405; error_page turns that into a 200 with the file.
    return f"""
        location = /api/embeddings {{ default_type application/json; alias {folder}/one.json;
                                      error_page 405 =200 $uri; }}
        location = /api/embed {{ default_type application/json; alias {folder}/batch.json;
                                 error_page 405 =200 $uri; }}
    """


def openai_location(folder: Path, name: str) -> str:
    return f"""
        location = /v1/models {{ default_type application/json;
            return 200 '{{"object":"list","data":[{{"id":"m","object":"model","owned_by":"bench"}}]}}'; }}
        location = /v1/embeddings {{ default_type application/json; alias {folder}/{name};
                                     error_page 405 =200 $uri; }}
    """


# -- the contenders ---------------------------------------------------------------------------------

async def guide_loop(url: str, texts: list[str], model: str, *, path: str, concurrency: int = 10) -> int:
    """generate_embeddings_async.py from the Ollama Batch Inference Guide: one text per request, a semaphore of 10."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(text: str) -> list[float]:
            async with sem:
                if path == "/api/embeddings":
                    payload = {"model": model, "prompt": text}
                else:
                    payload = {"model": model, "input": text}
                async with session.post(url + path, json=payload) as response:
                    data = await response.json()
                    return data["embedding"] if "embedding" in data else data["data"][0]["embedding"]
        vectors = await asyncio.gather(*(one(t) for t in texts))
    assert len(vectors) == len(texts) and len(vectors[0]) > 0
    return len(vectors)


def corral_embed(spec: ServerSpec, texts: list[str], model: str, **kwargs) -> int:
    vectors = corral.embed(texts, model=model, servers=[spec], **kwargs)
    assert vectors.shape[0] == len(texts) and not np.isnan(vectors).any()
    return len(vectors)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, rounds: list[list[str]], seed_fn, corral_fn) -> tuple[float, float]:
    """Alternate the contenders round by round on the same texts; texts/s of each over all rounds."""
    seed_s = corral_s = 0.0
    for chunk in rounds:
        seed_s += timed(lambda chunk=chunk: seed_fn(chunk))
        corral_s += timed(lambda chunk=chunk: corral_fn(chunk))
    n = sum(len(c) for c in rounds)
    seed_rate, corral_rate = n / seed_s, n / corral_s
    print(f"{name}: {n} texts | the Ollama Batch Inference Guide (1 text/request, 10 concurrent): "
          f"{seed_rate:,.1f} texts/s | "
          f"corral embed: {corral_rate:,.1f} texts/s | ratio {corral_rate / seed_rate:.1f}x", flush=True)
    return seed_rate, corral_rate


def split(texts: list[str], rounds: int) -> list[list[str]]:
    size = -(-len(texts) // rounds)
    return [texts[i:i + size] for i in range(0, len(texts), size)]


# -- parts ------------------------------------------------------------------------------------------

def overhead(nginx: Nginx, args: argparse.Namespace) -> None:
    texts = corpus(args.texts)
    spec = ServerSpec(nginx.url, api="ollama")
    # Warm both up (connections, imports), then measure.
    asyncio.run(guide_loop(nginx.url, texts[:200], "llama3.2", path="/api/embeddings"))
    corral_embed(spec, texts[:BATCH * 4], "llama3.2", batch_size=BATCH)
    compare("zero-latency nginx (client overhead)", split(texts, args.rounds),
            lambda chunk: asyncio.run(guide_loop(nginx.url, chunk, "llama3.2", path="/api/embeddings")),
            lambda chunk: corral_embed(spec, chunk, "llama3.2", batch_size=BATCH))


def overhead_openai(binary: str, folder: Path, args: argparse.Namespace) -> None:
    texts = corpus(args.texts)
    seed_server = Nginx(binary, openai_location(folder, "openai-one.json")).start()
    corral_server = Nginx(binary, openai_location(folder, "openai-batch.json")).start()
    try:
        spec = ServerSpec(corral_server.url, api="openai")
        asyncio.run(guide_loop(seed_server.url, texts[:200], "m", path="/v1/embeddings"))
        corral_embed(spec, texts[:BATCH * 4], "m", batch_size=BATCH)
        compare("zero-latency nginx, OpenAI-compatible (/v1/embeddings; corral asks base64)",
                split(texts, args.rounds),
                lambda chunk: asyncio.run(guide_loop(seed_server.url, chunk, "m", path="/v1/embeddings")),
                lambda chunk: corral_embed(spec, chunk, "m", batch_size=BATCH))
    finally:
        seed_server.stop()
        corral_server.stop()


def memory(nginx: Nginx, tmp: Path) -> None:
    import pandas as pd

    for rows in (10_240, 102_400):  # whole batches: nginx's canned answer has 32 vectors
        source = tmp / f"corpus-{rows}.parquet"
        pd.DataFrame({"id": range(rows), "text": corpus(rows, seed=rows)}).to_parquet(source)
        out = tmp / f"vectors-{rows}.parquet"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "corral", "embed", str(source), "--model", "llama3.2", "--server",
             nginx.url, "-o", str(out), "--batch-size", str(BATCH), "--progress", "none"],
            capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        # ru_maxrss of children is the largest child so far: report it only when it grew.
        print(f"corral embed, {rows:,} rows x {DIM} floats -> Parquet ({out.stat().st_size / 1e6:,.0f} MB): "
              f"{seconds:.1f}s ({rows / seconds:,.0f} rows/s), peak RSS {max(peak, before) / 1024:,.0f} MB",
              flush=True)


def real(args: argparse.Namespace) -> None:
    from corral.local import LocalServer

    texts = corpus(args.real_texts, seed=2)
    with LocalServer(n_parallel=4, embedding=True) as server:
        spec = ServerSpec(server.url, api="openai")
        asyncio.run(guide_loop(server.url, texts[:20], server.model, path="/v1/embeddings"))  # warm-up
        compare(f"real llama.cpp server (SmolLM2-135M, {server.n_parallel} slots, CPU)",
                split(texts, args.rounds),
                lambda chunk: asyncio.run(guide_loop(server.url, chunk, server.model, path="/v1/embeddings")),
                lambda chunk: corral_embed(spec, chunk, server.model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20_480, help="a multiple of 32 per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--real-texts", type=int, default=2000)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        raise SystemExit("nginx is needed for the zero-latency part: apt-get install nginx-light")
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-embed-"))
    tmp.chmod(0o755)
    try:
        nginx = Nginx(binary, canned_locations(tmp / "canned")).start()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        overhead(nginx, args)
        overhead_openai(binary, tmp / "canned", args)
        if not args.no_memory:
            memory(nginx, tmp)
    finally:
        nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.real:
        real(args)


if __name__ == "__main__":
    main()
