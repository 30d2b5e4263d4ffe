"""Serving faults: one of two model replicas is killed (SIGKILL, by PID) under a bounded load.

A real loopback-only Ray Serve runs the app with exactly 2 model replicas (min = max = 2). Client
threads on 127.0.0.1 send single-review requests (at most :data:`MAX_REQUESTS`, everything done
within :data:`TIME_LIMIT_S`); one replica's worker process is killed mid-load. The ingress retries
a prediction whose replica died (predictions are idempotent), so clients see no failure; Serve
starts a replacement (a new actor and PID) and the request rate after recovery is at least
:data:`RECOVERY_FRACTION` of the rate before the kill, both measured in the same test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import TimedLoad, keyless_server, model_replica_actors, model_replicas, wait_until

pytestmark = pytest.mark.ray

# Batches wait up to 0.1 s to fill and never fill early (16 > CONCURRENCY): a replica nearly always
# holds requests, so the kill hits requests in flight, which are what the ingress must retry.
ARGS = {"num_cpus": 0.5, "min_replicas": 2, "max_replicas": 2, "max_batch_size": 16, "batch_wait_timeout_s": 0.1,
        "max_ongoing_requests": 16, "max_text_chars": 2000, "max_texts": 8}
CONCURRENCY = 8
MAX_REQUESTS = 20_000
TIME_LIMIT_S = 300.0
WINDOW_S = 5.0
FAILURE_BOUND = 0  # failed requests allowed: the ingress retries on a dead replica
RECOVERY_FRACTION = 0.5


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with keyless_server(tiny_model_dir, tmp_path_factory.mktemp("faults"), ARGS) as url:
        yield url


def test_killing_a_model_replica_under_load_fails_no_request_and_recovers(server: str) -> None:
    wait_until(lambda: model_replicas() == {"RUNNING": 2} and len(model_replica_actors()) == 2, 180, "2 model replicas")
    before = model_replica_actors()
    started = time.monotonic()
    load = TimedLoad(f"{server}/v1/predict", CONCURRENCY, MAX_REQUESTS)
    try:
        time.sleep(3)  # connections open, batches flowing
        window_start = time.monotonic()
        time.sleep(WINDOW_S)
        killed_id, killed_pid = next(iter(before.items()))
        killed_at = time.monotonic()
        os.kill(killed_pid, signal.SIGKILL)

        def replaced() -> bool:
            alive = model_replica_actors()
            return len(alive) == 2 and killed_id not in alive and model_replicas() == {"RUNNING": 2}

        wait_until(replaced, TIME_LIMIT_S - (time.monotonic() - started) - 2 * WINDOW_S, "a replacement replica")
        recovered_at = time.monotonic()
        time.sleep(WINDOW_S)
        recovery_end = time.monotonic()
    finally:
        load.stop(60)
    after = model_replica_actors()
    rate_before, rate_after = load.rate(window_start, killed_at), load.rate(recovered_at, recovery_end)
    print(f"\nreplica kill: {load.sent} requests, {len(load.failures)} failed; replacement RUNNING "
          f"{recovered_at - killed_at:.1f} s after the kill; {rate_before:.1f} req/s before, {rate_after:.1f} after")
    assert time.monotonic() - started < TIME_LIMIT_S and load.sent < MAX_REQUESTS
    assert len(load.failures) <= FAILURE_BOUND, load.failures[:5]
    assert len(after) == 2 and killed_id not in after and killed_pid not in after.values()
    assert rate_before > 0 and rate_after >= RECOVERY_FRACTION * rate_before


class FakeResponse:
    """Stands in for a DeploymentHandle method: ``remote()`` raises the next error, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls = errors, 0

    async def _call(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "prediction"

    def remote(self, *args: object):  # noqa: ANN201 (an awaitable, like a DeploymentResponse)
        return self._call()


def test_ingress_retries_once_on_a_dead_replica_then_answers_503() -> None:
    import asyncio
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from serve.admission import Overloaded
    from serve.app import SentimentAPI

    call = SentimentAPI.func_or_class._call
    once = SimpleNamespace(model=SimpleNamespace(predict=FakeResponse([ActorDiedError()])))
    assert asyncio.run(call(once, "predict", "good")) == "prediction" and once.model.predict.calls == 2
    twice = SimpleNamespace(model=SimpleNamespace(predict=FakeResponse([ActorDiedError(), ActorDiedError()])))
    with pytest.raises(Overloaded, match="model replica unavailable") as error:  # the HTTP layer's 503
        asyncio.run(call(twice, "predict", "good"))
    assert error.value.retry_after_s == 1
    full = SimpleNamespace(model=SimpleNamespace(predict=FakeResponse([BackPressureError(num_queued_requests=8,
                                                                                         max_queued_requests=8)])))
    with pytest.raises(Overloaded, match="max_queued_requests"):  # a full queue is not retried: 503 at once
        asyncio.run(call(full, "predict", "good"))
    assert full.model.predict.calls == 1
    other = SimpleNamespace(model=SimpleNamespace(predict=FakeResponse([ValueError("a bug")])))
    with pytest.raises(ValueError):  # only a dead replica is retried
        asyncio.run(call(other, "predict", "good"))
    assert other.model.predict.calls == 1
