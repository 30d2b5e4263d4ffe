"""bench.serve_throughput in CI-sized form: the endpoint's TEI and v2 routes against its /v1, answers
checked, ratios printed last (a smoke run: no timing is asserted).

Slow tier (``bash scripts/test.sh -m slow``): CI checks the TEI and v2 routes' answers against /v1 in
tests/serve/; this smoke checks the benchmark script around them."""

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


def test_the_protocols_peer_checks_their_answers_and_prints_their_ratios_to_v1(tiny_model_dir: Path, tmp_path: Path,
                                                                                 small_imdb: Path) -> None:
    checkpoint = make_checkpoint(tiny_model_dir, tmp_path / "model")
    # (Its in-process mode's deploy, load and in-process rate run in tests/bench/test_gpu_suite.py, slow tier.)
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve_throughput", "--smoke", "--peer", "apis", "--checkpoint", str(checkpoint)],
        cwd=ROOT, env={**os.environ, "IMDB_DATA_DIR": str(small_imdb)}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    *_, tei, v2 = out.stdout.splitlines()
    for line, api in ((tei, "tei"), (v2, "v2")):
        assert line.startswith(f"{api} / v1: "), out.stdout[-1000:]
        ratios = re.findall(r"([0-9.]+)x req/s and ([0-9.]+)x p50 at concurrency (\d+)", line)
        assert [c for *_, c in ratios] == ["1", "4"] and all(float(r) > 0 for r, _, _ in ratios), line
