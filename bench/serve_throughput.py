"""HTTP throughput and latency of the Serve deployment against the in-process Predictor, one run.

    python -m bench.serve_throughput                      # packaged MiniLM-L6 at 128 tokens
    python -m bench.serve_throughput --smoke --checkpoint <model folder>   # CI-sized

Reviews are real IMDB test reviews from $IMDB_DATA_DIR. One model replica (fixed, holding every
core, as the in-process baseline does) serves single-review requests from an aiohttp client at each
concurrency; the baseline is ``Predictor.predict_details`` on the same reviews in batches of 32
(the deployment's max_batch_size). Printed last: HTTP reviews/s divided by in-process reviews/s.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on loopback)

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import ray
from ray import serve

from ray_jobs.local_ray import init_ray
from serve.app import build_app
from sentiment.layout import save_model_dir
from sentiment.config import DATA_DIR_ENV, PACKAGED_MODEL, load_config
from sentiment.data import clean_text
from sentiment.model import build_model, load_tokenizer
from sentiment.predict import Predictor

BATCH = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model folder to serve (default: packaged MiniLM, untrained head)")
    p.add_argument("--max-seq-length", type=int, default=128, help="for the packaged model (default 128)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="timed requests per concurrency")
    p.add_argument("--smoke", action="store_true", help="CI-sized: 24 requests at concurrency 1 and 4")
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests = [1, 4], 24
    return args


def load_reviews(n: int) -> list[str]:
    """``n`` IMDB test reviews (seeded sample) from $IMDB_DATA_DIR."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder or not (Path(folder) / "test.parquet").is_file():
        sys.exit(f"set {DATA_DIR_ENV} to a folder with IMDB test.parquet")
    texts = pd.read_parquet(Path(folder) / "test.parquet", columns=["text"])["text"]
    return [clean_text(t) for t in texts.sample(n, random_state=0, replace=n > len(texts))]


def packaged_checkpoint(max_seq_length: int, folder: Path) -> Path:
    """The packaged MiniLM with a fresh head, saved as a servable model folder (speed needs no training)."""
    cfg = load_config(None, [f"model.name_or_path={PACKAGED_MODEL}", f"data.max_seq_length={max_seq_length}"])
    return save_model_dir(build_model(cfg.model), load_tokenizer(PACKAGED_MODEL), cfg, {}, folder)


def in_process(predictor: Predictor, reviews: list[str]) -> float:
    """Reviews per second of ``Predictor.predict_details`` on ``reviews``."""
    start = time.perf_counter()
    predictor.predict_details(reviews, batch_size=BATCH)
    return len(reviews) / (time.perf_counter() - start)


async def timed_requests(
    session: aiohttp.ClientSession, url: str, texts: list[str], concurrency: int
) -> tuple[list[float], float]:
    """Post every text once, ``concurrency`` at a time; per-request seconds and the wall time."""
    todo = iter(texts)
    latencies: list[float] = []

    async def worker() -> None:
        for text in todo:
            start = time.perf_counter()
            async with session.post(url, json={"text": text}) as r:
                r.raise_for_status()
                await r.read()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def http_load(url: str, reviews: list[str], concurrency: int) -> dict[str, float]:
    """Reviews/s and p50/p99 latency (ms) of single-review requests at ``concurrency``, after a warm-up."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await timed_requests(session, url, reviews[:BATCH], concurrency)
        latencies, wall = await timed_requests(session, url, reviews, concurrency)
    ms = np.array(latencies) * 1000
    return {"reviews_per_s": len(reviews) / wall, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def deploy(checkpoint: Path) -> str:
    """One fixed replica holding every core, on a loopback Serve; returns the predict URL."""
    init_ray()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cores = float(os.cpu_count() or 1)
    app = build_app({"checkpoint": str(checkpoint), "num_cpus": cores, "min_replicas": 1, "max_replicas": 1,
                     "wandb_mode": "disabled"})
    serve.run(app, name="bench", route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}/v1/predict"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and return its figures.

    The in-process baseline is measured again just before each concurrency level (the replicas
    idle meanwhile), so a load change on the machine during the run hits both sides of a ratio.
    """
    args = parse_args(argv)
    reviews = load_reviews(args.requests)
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else packaged_checkpoint(args.max_seq_length, Path(tmp) / "m")
        predictor = Predictor.load(checkpoint)
        predictor.predict_details(reviews[:BATCH], batch_size=BATCH)  # warm-up
        url = deploy(checkpoint)
        try:
            for c in args.concurrency:
                baseline = in_process(predictor, reviews)
                rows[c] = {**asyncio.run(http_load(url, reviews, c)), "in_process_reviews_per_s": baseline}
                rows[c]["ratio"] = rows[c]["reviews_per_s"] / baseline
        finally:
            serve.shutdown()
            ray.shutdown()
    print(f"\n{len(reviews)} IMDB test reviews, {predictor.cfg.data.max_seq_length} tokens max, "
          f"{os.cpu_count()} cores, one replica; in-process: Predictor, batches of {BATCH}")
    print(f"{'concurrency':>11} {'HTTP rev/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'in-process rev/s':>17}")
    for c, r in rows.items():
        http, p50, p99, local = r["reviews_per_s"], r["p50_ms"], r["p99_ms"], r["in_process_reviews_per_s"]
        print(f"{c:>11} {http:>10.1f} {p50:>8.1f} {p99:>8.1f} {local:>17.1f}")
    print("HTTP / in-process throughput: " + ", ".join(f"{r['ratio']:.2f} at concurrency {c}" for c, r in rows.items()))
    return rows


if __name__ == "__main__":
    main()
