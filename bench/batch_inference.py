"""Ray Data batch inference against a single-process loop on the same reviews, one run.

    python -m bench.batch_inference                       # 2,000 IMDB test reviews, packaged MiniLM at 128
    python -m bench.batch_inference --smoke --checkpoint <model folder>   # CI-sized

The baseline is ``Predictor.predict_details`` in this process (all cores to torch, reviews
sorted by length, batches of 64). Ray Data runs :func:`ray_jobs.batch_inference.score_texts`
with ``--workers`` CPU actors (1 core each), end to end: actor start and model load included, as
a user's job pays them. Printed last: Ray Data reviews/s divided by single-process reviews/s.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on loopback)

# isort: split

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from bench.common import load_reviews, packaged_checkpoint
from ray_jobs.batch_inference import quiet_ray_data, score_texts
from ray_jobs.local_ray import init_ray
from sentiment.layout import resolve
from sentiment.predict import Predictor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model folder (default: packaged MiniLM, untrained head)")
    p.add_argument("--max-seq-length", type=int, default=128, help="for the packaged model (default 128)")
    p.add_argument("--reviews", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2, help="Ray Data CPU actors")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="CI-sized: 64 reviews")
    args = p.parse_args(argv)
    if args.smoke:
        args.reviews = 64
    return args


def single_process(predictor: Predictor, reviews: list[str], batch_size: int) -> float:
    """Reviews per second of the in-process loop."""
    start = time.perf_counter()
    predictor.predict_details(reviews, batch_size=batch_size)
    return len(reviews) / (time.perf_counter() - start)


def ray_data(checkpoint: Path, reviews: list[str], workers: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Reviews per second of Ray Data end to end, and its positive-class probabilities."""
    start = time.perf_counter()
    scores, _ = score_texts(reviews, resolve(checkpoint), workers, False, batch_size, "bench", backend="torch")
    return len(reviews) / (time.perf_counter() - start), scores.filter(like="prob_").to_numpy()[:, -1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both sides, print the table and return the figures."""
    args = parse_args(argv)
    reviews = load_reviews(args.reviews)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else packaged_checkpoint(args.max_seq_length, Path(tmp) / "m")
        predictor = Predictor.load(checkpoint)
        predictor.predict_details(reviews[:64])  # warm-up
        local = single_process(predictor, reviews, args.batch_size)
        init_ray(num_cpus=args.workers)
        quiet_ray_data()
        try:
            distributed, proba = ray_data(checkpoint, reviews, args.workers, args.batch_size)
        finally:
            ray.shutdown()
    same = np.abs(proba - predictor.predict(reviews, return_proba=True)[:, -1]).max()
    row = {"reviews": len(reviews), "single_process": local, "ray_data": distributed, "ratio": distributed / local, "max_diff": float(same)}
    print(f"\n{len(reviews)} IMDB test reviews, {predictor.cfg.data.max_seq_length} tokens max, {os.cpu_count()} cores")
    print(f"single process (torch on all cores): {local:.1f} reviews/s")
    print(f"Ray Data, {args.workers} CPU actors, end to end (actor start + model load included): {distributed:.1f} reviews/s")
    print(f"largest probability difference between the two: {same:.2e}")
    print(f"Ray Data / single process throughput: {row['ratio']:.3g}")  # 3 digits: tiny in a smoke run
    return row


if __name__ == "__main__":
    main()
