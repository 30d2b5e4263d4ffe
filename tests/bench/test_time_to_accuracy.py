"""bench.time_to_accuracy runs end to end in CI-sized form and prints its summary line last (a smoke run: no timing
is asserted)."""


from __future__ import annotations

import re

import pytest

from tests.support import run_module

pytestmark = [pytest.mark.ray, pytest.mark.bench]


# Like the other training benchmarks' smokes, it runs with the slow tier (-m slow), to keep CI in its budget.
@pytest.mark.slow
def test_time_to_accuracy_smoke_reports_accuracy_and_time_last(tiny_model_dir, small_imdb, tmp_path):
    lines = run_module("bench.time_to_accuracy", "--smoke", f"model.name_or_path={tiny_model_dir}",
                 f"data.path={small_imdb}", f"run.storage_path={tmp_path}", data=small_imdb)
    m = re.fullmatch(r"time-to-accuracy: (\d\.\d{4}) test accuracy after ([\d.]+) s of training "
                     r"\(([\d.]+) s job\) on CPU, \d+ cores, no GPU", lines[-1])
    assert m, lines[-1]
    correct = float(m.group(1)) * 32  # a share of the 32 test reviews (printed to 4 decimals)
    assert abs(correct - round(correct)) < 0.005 and 0 < float(m.group(2)) <= float(m.group(3))
    assert any(line.startswith("| CPU") and "| 32 |" in line for line in lines)  # the table row: 32 test reviews
