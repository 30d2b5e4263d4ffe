"""The training benchmarks run end to end in CI-sized form and print their summary line last
(smoke runs: no timing is asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sentiment.precision import auto_precision
from tests.support import run_module

pytestmark = [pytest.mark.ray, pytest.mark.bench]
ROOT = Path(__file__).resolve().parent.parent


def test_train_throughput_smoke_prints_the_ratio_last(tiny_model_dir, small_imdb, tmp_path):
    lines = run_module("bench.train_throughput", "--smoke", "--model", str(tiny_model_dir), "--storage", str(tmp_path), data=small_imdb)
    rows = [line for line in lines if line.startswith("| fixed") or line.startswith("| real")]
    assert len(rows) == 2 and all(float(r.split("|")[-2]) > 0 for r in rows)
    assert re.fullmatch(r"ratio project/plain \(geometric mean over shapes\): \d+\.\d\d", lines[-1])


# Its job (bench.common.run_job) runs in CI inside tests/test_bench_gpu_suite.py's smoke; this checks
# the command's own output and runs with the soak (-m slow), to keep CI in its budget.
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


def test_quickstart_vs_trainer_smoke_prints_both_sides_and_the_ratios_last(small_imdb):
    lines = run_module("bench.quickstart_vs_trainer", "--smoke", data=small_imdb)
    trainer = re.fullmatch(r"transformers\.Trainer \(fp32\): test accuracy (\d\.\d{4}), training \+ test (\d+) s", lines[-3])
    ours = re.fullmatch(r"quickstart \(Ray Train \+ DeepSpeed, 2 workers, (fp32|bf16)\): test accuracy (\d\.\d{4}), "
                        r"Ray start \+ training \+ test (\d+) s", lines[-2])
    assert trainer and ours, lines[-4:]
    assert ours.group(1) == auto_precision(torch.device("cpu"))  # the quickstart's precision: auto, resolved on this CPU
    assert lines[-4].startswith("64 training and 32 test reviews, 32 tokens")
    assert re.fullmatch(r"quickstart / Trainer: accuracy [+-]\d+\.\d points, time \d+\.\d\dx", lines[-1])


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
