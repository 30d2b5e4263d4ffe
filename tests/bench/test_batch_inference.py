"""bench.batch_inference runs Ray Data against a single-process loop in CI-sized form and prints the ratio
last (a smoke run: no timing is asserted).

Slow tier (``bash scripts/test.sh -m slow``): CI runs Ray Data batch inference itself in
tests/ray_jobs/test_batch_inference.py; this smoke checks the benchmark script around it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import make_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_checks_both_agree_and_prints_the_ratio_last(tiny_model_dir, small_imdb, tmp_path):
    model = make_checkpoint(tiny_model_dir, tmp_path / "model")
    out = subprocess.run(
        [sys.executable, "-m", "bench.batch_inference", "--smoke", "--checkpoint", str(model)],
        cwd=ROOT, env={**os.environ, "IMDB_DATA_DIR": str(small_imdb)},
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"Ray Data / single process throughput: [\d.e+-]+", last) and float(last.split()[-1]) > 0
    assert float(re.search(r"difference between the two: (\S+)", out.stdout).group(1)) < 1e-5
