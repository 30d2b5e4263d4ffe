"""Soak: 20,000 requests through a real Ray Serve on 127.0.0.1; the serving processes' RSS stays flat.

Marked ``slow``: the default run (``bash scripts/test.sh``) skips it; ``bash scripts/test.sh -m slow``
runs it. One model replica, :data:`CONCURRENCY` client threads, :data:`REQUESTS` single-review
requests after a warm-up, all within :data:`TIME_LIMIT_S`. The RSS of the model replica, the
ingress replica and the HTTP proxy is read (psutil) after the warm-up and after the soak; each may
grow by at most :data:`RSS_BOUND_MB`. The figures are printed and written to
``test-artifacts/serve_soak.md`` (copied into ``bench/RESULTS.md`` by hand).
"""

from __future__ import annotations

import datetime
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, TimedLoad, keyless_server, model_replicas, serve_pids, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = {"num_cpus": 0.5, "min_replicas": 1, "max_replicas": 1, "max_batch_size": 8, "batch_wait_timeout_s": 0.005,
        "max_ongoing_requests": 16, "max_text_chars": 2000, "max_texts": 8}
WARM_UP = 500
REQUESTS = 20_000
CONCURRENCY = 4
TIME_LIMIT_S = 600.0
RSS_BOUND_MB = 50.0


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with keyless_server(tiny_model_dir, tmp_path_factory.mktemp("soak"), ARGS) as url:
        yield url


def test_20000_requests_in_10_minutes_with_flat_rss(server: str, artifacts: Path) -> None:
    wait_until(lambda: model_replicas() == {"RUNNING": 1}, 180, "the model replica")
    url = f"{server}/v1/predict"
    warm = TimedLoad(url, CONCURRENCY, WARM_UP)
    assert warm.join(120) and warm.failures == []
    pids = serve_pids()
    before = {role: psutil.Process(pid).memory_info().rss for role, pid in pids.items()}
    started = time.monotonic()
    load = TimedLoad(url, CONCURRENCY, REQUESTS)
    finished = load.join(TIME_LIMIT_S)
    elapsed = time.monotonic() - started
    if not finished:
        load.stop(60)
    assert serve_pids() == pids  # no serving process was replaced along the way
    after = {role: psutil.Process(pid).memory_info().rss for role, pid in pids.items()}
    growth = {role: (after[role] - before[role]) / 2**20 for role in pids}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = "\n".join(f"| {role} | {before[role] / 2**20:.1f} | {after[role] / 2**20:.1f} | {growth[role]:+.1f} |" for role in pids)
    report = (
        f"- Date: {datetime.date.today()}, commit `{commit}`, machine: 2-core CPU, no GPU\n"
        f"- Requests: {load.sent} (after {WARM_UP} warm-up), failed: {len(load.failures)}, "
        f"{elapsed:.0f} s, {len(load.done) / elapsed:.1f} req/s at concurrency {CONCURRENCY}\n\n"
        f"| process | RSS before (MB) | RSS after (MB) | growth (MB) |\n| --- | ---: | ---: | ---: |\n{rows}\n"
    )
    print("\n" + report)
    (artifacts / "serve_soak.md").write_text(report)
    assert finished and load.sent == REQUESTS, f"{load.sent} requests sent in {TIME_LIMIT_S:.0f} s"
    assert load.failures == [], load.failures[:5]
    assert all(g < RSS_BOUND_MB for g in growth.values()), growth
