"""Chunked vs truncated scoring of the reviews longer than the model's length: accuracy, cost, 95% CIs.

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.long_reviews --checkpoint <run folder or model>
    python -m bench.long_reviews --smoke --checkpoint <tiny model folder>     # CI-sized

From a seeded sample of the IMDB test split, the first ``--reviews`` reviews longer than the
checkpoint's ``max_seq_length`` (the only ones where the two ways differ) are scored by one
``Predictor`` (torch, this process's threads) three ways: truncated (the checkpoint's
``data.truncation``, the baseline), and in chunks at two strides (the whole budget, the default:
windows overlap only at the end; and half the budget). Every way is timed on its own pass.
Chunks are aggregated by the project's rule (mean of the windows' logits) and, for comparison,
two others on the same window logits: mean of probabilities, and the most confident window.
Each accuracy difference to truncated is paired (same reviews) with a normal 95% interval
(mean of the per-review differences +- 1.96 standard errors). Printed last: the default chunked
rule minus truncated, in points, with its interval.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import commit, device_name, paired_difference
from sentiment.data import mean_by_owner
from sentiment.metrics import softmax
from sentiment.predict import Predictor

DATA_DIR_ENV = "IMDB_DATA_DIR"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a fine-tuned model: run folder, epoch checkpoint or model folder")
    p.add_argument("--reviews", type=int, default=1000, help="long reviews to score")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="CI-sized: 24 reviews")
    args = p.parse_args(argv)
    if args.smoke:
        args.reviews = 24
    return args


def long_reviews(predictor: Predictor, n: int) -> tuple[list[str], np.ndarray]:
    """The first ``n`` reviews of a seeded shuffle of the test split that exceed the model's length."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder or not (Path(folder) / "test.parquet").is_file():
        raise SystemExit(f"set {DATA_DIR_ENV} to a folder with IMDB test.parquet")
    df = pd.read_parquet(Path(folder) / "test.parquet", columns=["text", "label"]).sample(frac=1, random_state=0)
    texts, labels, scanned = [], [], 0
    for start in range(0, len(df), 2000):
        part = df.iloc[start:start + 2000]
        long = predictor.encode(part["text"].tolist(), "truncate").truncated
        texts += part["text"][long].tolist()
        labels += part["label"][long].tolist()
        scanned += len(part)
        if len(texts) >= n:
            break
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} test reviews exceed {predictor.cfg.data.max_seq_length} tokens; ask for fewer")
    print(f"{len(texts) / scanned:.1%} of {scanned} test reviews exceed {predictor.cfg.data.max_seq_length} tokens")
    return texts[:n], np.asarray(labels[:n])


def timed_window_logits(predictor: Predictor, windows: list[list[int]], batch_size: int) -> tuple[np.ndarray, float]:
    """Logits of every window and the seconds the pass took."""
    start = time.perf_counter()
    logits = predictor.logits_for_ids(windows, batch_size)
    return logits, time.perf_counter() - start


def aggregate(rule: str, window_logits: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Per-review class scores from window logits: mean logits, mean probabilities, or the most confident window."""
    if rule == "mean of logits":
        values = window_logits
    elif rule == "mean of probabilities":
        values = softmax(window_logits.astype(np.float64))
    else:  # most confident window
        proba = softmax(window_logits.astype(np.float64))
        out = np.zeros((n, proba.shape[1]))
        best = np.full(n, -1.0)
        for i, (owner, p) in enumerate(zip(owners, proba)):
            if p.max() > best[owner]:
                best[owner], out[owner] = p.max(), p
        return out
    return mean_by_owner(values, owners, n)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    predictor = Predictor.load(args.checkpoint)
    data = predictor.cfg.data
    texts, labels = long_reviews(predictor, args.reviews)
    budget = data.max_seq_length - len(predictor.encoder.specials)
    print(f"# long reviews: {device_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{dt.date.today()}, commit {commit()}")
    print(f"checkpoint {predictor.path}: {data.max_seq_length} tokens, truncation {data.truncation}; "
          f"{len(texts)} test reviews longer than that (seeded sample)")
    predictor.logits_for_ids(predictor.encode(texts[:args.batch_size], "truncate").windows, args.batch_size)  # warm-up
    truncated = predictor.encode(texts, "truncate")
    plain_logits, plain_s = timed_window_logits(predictor, truncated.windows, args.batch_size)
    baseline = plain_logits.argmax(1) == labels
    rows = [{"way": f"truncated ({data.truncation})", "windows/review": 1.0, "seconds": plain_s,
             "accuracy": baseline.mean(), "vs truncated (points)": "baseline"}]
    headline = {}
    for stride in (budget, budget // 2):
        predictor.cfg = predictor.cfg.model_copy(update={"data": data.model_copy(update={"chunk_stride": stride})})
        chunked = predictor.encode(texts, "chunks")
        window_logits, seconds = timed_window_logits(predictor, chunked.windows, args.batch_size)
        for rule in ("mean of logits", "mean of probabilities", "most confident window"):
            correct = aggregate(rule, window_logits, chunked.owners, len(texts)).argmax(1) == labels
            diff, lo, hi = paired_difference(correct, baseline)
            rows.append({"way": f"chunks, stride {stride}, {rule}", "windows/review": chunked.counts.mean(),
                         "seconds": seconds, "accuracy": correct.mean(),
                         "vs truncated (points)": f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}]"})
            if stride == budget and rule == "mean of logits":
                headline = {"difference": diff, "low": lo, "high": hi, "seconds_ratio": seconds / plain_s}
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))
    print(f"chunks (default) - truncated on long reviews: {headline['difference']:+.2f} points, 95% CI "
          f"[{headline['low']:+.2f}, {headline['high']:+.2f}], at {headline['seconds_ratio']:.2f}x the time")
    return headline


if __name__ == "__main__":
    main()
