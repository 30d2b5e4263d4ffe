"""bench.serve_throughput: the median and range of its interleaved rounds' ratios; in CI-sized form
(a smoke run: no timing is asserted), the endpoint's TEI and v2 routes against its /v1, answers
checked, and the endpoint against the plain server in rounds, ratios printed last.

The smokes are in the slow tier (``bash scripts/test.sh -m slow``): CI checks the TEI and v2 routes'
answers against /v1 in tests/serve/; the smokes check the benchmark script around them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.serve_throughput import hottest, peer_ratios
from tests.support import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def smoke(peer: str, checkpoint: Path, data: Path, timeout: int, *options: str) -> subprocess.CompletedProcess:
    """``bench.serve_throughput --smoke --peer <peer> [options]`` on ``checkpoint``, reviews from ``data``;
    it must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve_throughput", "--smoke", "--peer", peer, "--checkpoint", str(checkpoint), *options],
        cwd=ROOT, env={**os.environ, "IMDB_DATA_DIR": str(data)}, capture_output=True, text=True, timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_peer_ratios_are_the_median_and_range_over_rounds_paired_by_round() -> None:
    rows = []
    for n, (plain, other, project, local) in enumerate([(10.0, 10.0, 20.0, 40.0), (20.0, 60.0, 30.0, 30.0),
                                                         (10.0, 20.0, 40.0, 50.0)], start=1):
        rows += [{"pair": "project x", "round": n, "server": "plain", "concurrency": 8, "reviews_per_s": plain, "p50_ms": 100.0},
                 {"pair": "project x", "round": n, "server": "other", "concurrency": 8, "reviews_per_s": other, "p50_ms": 25.0},
                 {"pair": "project x", "round": n, "server": "project x", "concurrency": 8, "reviews_per_s": project,
                  "p50_ms": 50.0 * n},
                 {"pair": "project x", "round": n, "server": "in-process", "concurrency": 0, "reviews_per_s": local}]
    # Per round over plain: 2.0, 1.5, 4.0 (median 2.0, not 2.25 = 90/40, the ratio of the totals), p50 0.5, 1.0, 1.5;
    # over other: 2.0, 0.5, 2.0, p50 2, 4, 6; over in-process: 0.5, 1.0, 0.8.
    assert peer_ratios(rows) == [
        "project x / plain at concurrency 8: 2.00x (1.50-4.00) req/s, 1.00x (0.50-1.50) p50",
        "project x / other at concurrency 8: 2.00x (0.50-2.00) req/s, 4.00x (2.00-6.00) p50",
        "project x / in-process at concurrency 8: 0.80x (0.50-1.00) reviews/s"]


def test_an_endpoint_scoring_whole_reviews_is_set_against_each_peer_by_its_windows() -> None:
    rows = []
    for n, (plain, project) in enumerate([(10.0, 5.0), (20.0, 8.0), (10.0, 6.0)], start=1):
        name = "project x, whole reviews"  # 2.5 windows a review: windows/s 12.5, 20, 15
        rows += [{"pair": name, "round": n, "server": "plain", "concurrency": 8, "long_reviews": "truncate",
                  "reviews_per_s": plain, "p50_ms": 100.0, "windows_per_s": plain},
                 {"pair": name, "round": n, "server": name, "concurrency": 8, "long_reviews": "chunks",
                  "reviews_per_s": project, "p50_ms": 200.0, "windows_per_s": 2.5 * project},
                 {"pair": name, "round": n, "server": "in-process", "concurrency": 0, "long_reviews": "chunks",
                  "reviews_per_s": 10.0, "windows_per_s": 25.0}]
    assert peer_ratios(rows) == [
        "project x, whole reviews / plain at concurrency 8: 0.50x (0.40-0.60) req/s, 2.00x (2.00-2.00) p50",
        "project x, whole reviews / plain at concurrency 8: 1.25x (1.00-1.50) its windows/s over the peer's reviews/s",
        "project x, whole reviews / in-process at concurrency 8: 0.60x (0.50-0.80) reviews/s"]


def test_hottest_ranks_leaf_functions_of_collapsed_stacks_by_their_share(tmp_path: Path) -> None:
    collapsed = tmp_path / "replica.txt"  # py-spy's raw format: one stack per line, root first, then its count
    collapsed.write_text("run (serve.py:10);encode (predict.py:20) 3\nrun (serve.py:10);encode (predict.py:21) 3\n"
                         "run (serve.py:10);forward (bert.py:5) 2\nrun (serve.py:11) 2\n")
    assert hottest(collapsed, 2) == [("encode (predict.py)", 0.6), ("forward (bert.py)", 0.2)]


@pytest.mark.ray
@pytest.mark.bench
@pytest.mark.slow
def test_the_protocols_peer_checks_their_answers_and_prints_their_ratios_to_v1(tiny_model_dir: Path, tmp_path: Path,
                                                                                 small_imdb: Path) -> None:
    # (Its in-process mode's deploy, load and in-process rate run in tests/bench/test_gpu_suite.py, slow tier.)
    out = smoke("apis", make_checkpoint(tiny_model_dir, tmp_path / "model"), small_imdb, timeout=300)
    *_, tei, v2 = out.stdout.splitlines()
    for line, api in ((tei, "tei"), (v2, "v2")):
        assert line.startswith(f"{api} / v1: "), out.stdout[-1000:]
        ratios = re.findall(r"([0-9.]+)x req/s and ([0-9.]+)x p50 at concurrency (\d+)", line)
        assert [c for *_, c in ratios] == ["1", "4"] and all(float(r) > 0 for r, _, _ in ratios), line


@pytest.mark.ray
@pytest.mark.bench
@pytest.mark.slow
def test_the_plain_peer_runs_interleaved_rounds_and_prints_median_and_range(tiny_model_dir: Path, tmp_path: Path,
                                                                             small_imdb: Path) -> None:
    out = smoke("plain", make_checkpoint(tiny_model_dir, tmp_path / "model"), small_imdb, 500, "--whole-reviews")
    *_, plain1, local1, plain4, local4, whole1, windows1, _, whole4, windows4, _ = out.stdout.splitlines()
    for line, peer, c in ((plain1, "plain", 1), (local1, "in-process", 1), (plain4, "plain", 4), (local4, "in-process", 4),
                          (whole1, "plain", 1), (whole4, "plain", 4)):
        assert re.match(rf"project .+ / {peer} at concurrency {c}: [0-9.]+x \([0-9.]+-[0-9.]+\) (req|reviews)/s", line), line
        median, low, high = map(float, re.search(r"([0-9.]+)x \(([0-9.]+)-([0-9.]+)\)", line).groups())
        assert 0 < low <= median <= high, line
    for line, c in ((windows1, 1), (windows4, 4)):
        assert re.match(rf"project .+, whole reviews / plain at concurrency {c}: [0-9.]+x .* its windows/s over the peer's "
                        "reviews/s", line), line
    rounds = re.findall(r"^\|.*\|\s*plain\s*\|", out.stdout, re.M)
    assert len(rounds) == 2 * 2 * 2, out.stdout[-2000:]  # 2 rounds x 2 concurrencies, truncating and whole
    cpu = out.stdout.split("CPU ms per request by process", 1)[1]
    assert "cpu model replica" in cpu and "cpu plain server" in cpu and "cpu infinity" not in cpu  # the roles seen
