"""bench.train_throughput runs end to end in CI-sized form and prints its summary line last (a smoke run: no timing
is asserted)."""


from __future__ import annotations

import re

import pytest

from tests.support import run_module

# A training benchmark's smoke: run with the slow tier (-m slow) before the benchmark is rerun, to keep CI in its budget.
pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.slow]


def test_train_throughput_smoke_prints_the_ratio_last(tiny_model_dir, small_imdb, tmp_path):
    lines = run_module("bench.train_throughput", "--smoke", "--model", str(tiny_model_dir), "--storage", str(tmp_path), data=small_imdb)
    rows = [line for line in lines if line.startswith("| fixed") or line.startswith("| real")]
    assert len(rows) == 2 and all(float(r.split("|")[-2]) > 0 for r in rows)
    assert re.fullmatch(r"ratio project/plain \(geometric mean over shapes\): \d+\.\d\d", lines[-1])
