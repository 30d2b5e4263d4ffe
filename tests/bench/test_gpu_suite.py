"""The GPU suite (bench/gpu_suite.py) runs every part in CI-sized form on CPU, writes its JSON and
prints the summary last (a smoke run: no figure is asserted beyond being measured)."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import run_module

# A training benchmark's smoke: run with the slow tier (-m slow) before the benchmark is rerun, to keep CI in its budget.
pytestmark = [pytest.mark.ray, pytest.mark.bench, pytest.mark.slow]


def test_gpu_suite_smoke_measures_every_part_and_writes_one_json(small_imdb, tmp_path):
    lines = run_module("bench.gpu_suite", "--smoke", "--out", str(tmp_path), "--commit", "abc1234", data=small_imdb)
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert result["commit"] == "abc1234" and result["device"].startswith("CPU") and result["matmul_peak_tflops"] > 0
    paths = {(r["shape"], r["path"]) for r in result["training"]}
    assert paths == {(s, p) for s in ("fixed", "real") for p in ("plain eager", "plain compiled")} | \
        {("fixed", "project ZeRO-0"), ("real", "project ZeRO-0")}  # ZeRO-2 on a GPU only
    assert all(r["samples_per_s"] > 0 and 0 < r["mfu"] < 1 for r in result["training"])
    fixed = [r["padded_length"] for r in result["training"] if r["shape"] == "fixed"]
    assert fixed == [64.0] * 3  # every batch padded to the maximum length
    correct = result["accuracy"]["test_accuracy"] * 32  # a share of the 32 test reviews
    assert result["accuracy"]["test_reviews"] == 32 and correct == pytest.approx(round(correct), abs=1e-6)
    assert [r["length"] for r in result["inference"]] == [64] and result["inference"][0]["reviews_per_s"] > 0
    assert [r["requests"] for r in result["serving"]] == ["64 texts", "1 text"]
    assert all(r["reviews_per_s"] > 0 and r["p50_ms"] > 0 and r["ratio"] > 0 for r in result["serving"])
    assert re.fullmatch(r"project ZeRO-0 / plain eager at fixed length: \d+\.\d\d", lines[-1])
    assert lines[-2].startswith("real lengths / fixed length (project ZeRO-0):")
