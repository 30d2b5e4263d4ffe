"""bench.ab runs end to end in CI-sized form and prints its summary line last (a smoke run: no timing
is asserted)."""


from __future__ import annotations

import re

import pytest

from tests.support import run_module

# A training benchmark's smoke: run with the slow tier (-m slow) before the benchmark is rerun, to keep CI in its budget.
pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.slow]


def test_ab_smoke_trains_both_arms_and_prints_the_paired_difference_last(tiny_model_dir, small_imdb, tmp_path):
    lines = run_module("bench.ab", "--smoke", "--name", "smoke", "--common", f"model.name_or_path={tiny_model_dir}",
                 f"data.path={small_imdb}", f"run.storage_path={tmp_path}", "deepspeed.zero_stage=0",
                 "--b", "train.lr=1e-3", data=small_imdb)
    arms = [line for line in lines if line.startswith("| A |") or line.startswith("| B |")]
    assert len(arms) == 2 and all(line.rstrip("| ").endswith("| 32") for line in arms)
    assert all(re.search(r"\| \d\.\d{4} \| negative \d\.\d\d, positive \d\.\d\d \|", line) for line in arms)  # macro F1, per class
    m = re.fullmatch(r"B - A \(smoke\): ([+-]\d+\.\d\d) points, 95% CI \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\] on 32 test reviews", lines[-1])
    assert m, lines[-1]
    mean, low, high = (float(g) for g in m.groups())
    assert high >= low and high - mean == pytest.approx(mean - low, abs=0.011)  # a normal interval: symmetric (printed to 0.01)
    assert len(list(tmp_path.glob("ab-smoke-a-*"))) == len(list(tmp_path.glob("ab-smoke-b-*"))) == 1
