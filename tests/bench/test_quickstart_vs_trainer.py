"""bench.quickstart_vs_trainer runs end to end in CI-sized form and prints its summary line last (a smoke run: no timing
is asserted)."""


from __future__ import annotations

import re

import pytest
import torch

from sentiment.precision import auto_precision
from tests.support import run_module

# A training benchmark's smoke: run with the slow tier (-m slow) before the benchmark is rerun, to keep CI in its budget.
pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.slow]


def test_quickstart_vs_trainer_smoke_prints_both_sides_and_the_ratios_last(small_imdb):
    lines = run_module("bench.quickstart_vs_trainer", "--smoke", data=small_imdb)
    trainer = re.fullmatch(r"transformers\.Trainer \(fp32\): test accuracy (\d\.\d{4}), training \+ test (\d+) s", lines[-3])
    ours = re.fullmatch(r"quickstart \(Ray Train \+ DeepSpeed, 2 workers, (fp32|bf16)\): test accuracy (\d\.\d{4}), "
                        r"Ray start \+ training \+ test (\d+) s", lines[-2])
    assert trainer and ours, lines[-4:]
    assert ours.group(1) == auto_precision(torch.device("cpu"))  # the quickstart's precision: auto, resolved on this CPU
    assert lines[-4].startswith("64 training and 32 test reviews, 32 tokens")
    assert re.fullmatch(r"quickstart / Trainer: accuracy [+-]\d+\.\d points, time \d+\.\d\dx", lines[-1])
