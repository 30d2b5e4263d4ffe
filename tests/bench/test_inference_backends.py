"""bench.inference_backends runs end to end in CI-sized form and prints each backend's ratio to torch last
(a smoke run: no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[2]


def test_backends_benchmark_smoke_run_prints_the_ratios_last(small_imdb):

    out = subprocess.run([sys.executable, "-m", "bench.inference_backends", "--smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "IMDB_DATA_DIR": os.environ.get("IMDB_DATA_DIR", str(small_imdb))})
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-2:]
    assert [line.split(" / ")[0] for line in last] == ["onnx", "onnx-int8"]
    assert all(float(line.split(": ")[1].split("x")[0]) > 0 for line in last)
