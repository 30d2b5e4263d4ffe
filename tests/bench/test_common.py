"""bench.common's pure helpers, on values worked by hand (the benchmarks built on them run in the other
tests/bench files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.common import figures, paired_difference, request_bodies, tiny_bert


def test_the_paired_difference_and_its_normal_interval():
    mean, low, high = paired_difference(np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0]))
    half = 100 * 1.96 * np.std([1, 0, 0, 1], ddof=1) / 2  # 56.58 points: d = 1, 0, 0, 1 over 4 reviews
    assert (mean, low, high) == pytest.approx((50.0, 50.0 - half, 50.0 + half)) and half == pytest.approx(56.58, abs=0.01)


def test_figures_are_reviews_per_second_and_latency_percentiles_in_ms():
    got = figures([0.1] * 99 + [1.0], wall=10.0, reviews=200)
    assert got == pytest.approx({"reviews_per_s": 20.0, "p50_ms": 100.0, "p99_ms": 109.0})  # p99: 1% of the way to 1000


def test_request_bodies_in_each_apis_shape():
    assert request_bodies(["a", "b", "c"], 1) == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    assert request_bodies(["a", "b", "c"], 2) == [{"texts": ["a", "b"]}, {"text": "c"}]
    assert request_bodies(["a", "b"], 2, "tei") == [{"inputs": ["a", "b"]}]
    assert request_bodies(["a"], 1, "v2") == [{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}]


def test_the_tiny_bert_takes_the_positions_asked_for(tmp_path):
    folder = tiny_bert(tmp_path / "tiny", positions=96)
    config = json.loads((folder / "config.json").read_text())
    assert (config["max_position_embeddings"], config["num_hidden_layers"], config["hidden_size"]) == (96, 2, 32)
    assert (folder / "tokenizer.json").is_file()
