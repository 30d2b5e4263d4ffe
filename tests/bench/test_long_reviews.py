"""bench.long_reviews compares chunked and truncated scoring on long reviews only, in CI-sized form
(a smoke run: no timing is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment.predict import Predictor
from tests.support import make_checkpoint

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[2]


def test_long_reviews_benchmark_compares_both_ways_on_long_reviews_only(tiny_model_dir, tmp_path):
    checkpoint = make_checkpoint(tiny_model_dir, tmp_path / "model")
    rng = np.random.default_rng(0)
    words = {0: "dull awful boring waste bad", 1: "great brilliant fun moving superb"}
    texts = [" ".join(rng.choice(f"{words[i % 2]} the film plot".split(), size=int(rng.integers(20, 200)))) for i in range(80)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(80)]}).to_parquet(tmp_path / "test.parquet")
    out = subprocess.run([sys.executable, "-m", "bench.long_reviews", "--smoke", "--checkpoint", str(checkpoint)],
                         cwd=ROOT, env={**os.environ, "IMDB_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "way" not in line]
    assert len(rows) == 7 and rows[0].startswith("| truncated (head_tail)")
    chunked = Predictor.load(checkpoint, long_reviews="chunks")
    scored = [t for t in pd.read_parquet(tmp_path / "test.parquet").sample(frac=1, random_state=0)["text"]
              if chunked.encode([t]).counts[0] > 1][:24]  # the benchmark's reviews: the first 24 long ones
    assert len(scored) == 24
    windows = float(rows[1].split("|")[2])
    assert windows == pytest.approx(np.mean([chunked.encode([t]).counts[0] for t in scored]), abs=1e-4)
    assert re.fullmatch(r"chunks \(default\) - truncated on long reviews: [+-][\d.]+ points, 95% CI \[[+-][\d.]+, [+-][\d.]+\], "
                        r"at [\d.]+x the time", out.stdout.strip().splitlines()[-1])
