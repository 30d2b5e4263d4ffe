"""The head's GCS dies under serving load and comes back from Redis (GCS fault tolerance).

A real loopback-only Ray whose GCS keeps its tables in a real ``redis-server`` (started by
``ray_jobs.redis_gcs`` on 127.0.0.1 with a random password) serves the app with one model
replica. Client threads on 127.0.0.1 send single-review requests (at most :data:`MAX_REQUESTS`,
all within :data:`TIME_LIMIT_S`); the GCS server process is killed with SIGKILL, stays down for
:data:`OUTAGE_S` seconds and is restarted on the same port, as a restarted head would be. The
test's driver disconnects for the outage, as HTTP clients hold no Ray connection (a connected
driver spins on a core reconnecting, which on 2 cores starves the replicas). Counted: failed
requests and the request rate before, during and after the outage; checked: the same replica process served
throughout, Serve still manages the app afterwards (it scales to 2 replicas), and the password
appears in no Ray log and no job or actor record.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from ray_jobs.local_ray import free_loopback_port, keep_ray_local
from ray_jobs.redis_gcs import RedisError, redis_config, start_redis
from serve.app import build_app
from serve.schemas import API_KEY_ENV
from tests.support import APP, TimedLoad, make_checkpoint, model_replica_actors, model_replicas, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

ARGS = {"num_cpus": 0.5, "min_replicas": 1, "max_replicas": 1, "max_batch_size": 8, "batch_wait_timeout_s": 0.005,
        "max_ongoing_requests": 16, "max_text_chars": 2000, "max_texts": 8, "wandb_mode": "disabled"}
CONCURRENCY = 4
MAX_REQUESTS = 20_000
TIME_LIMIT_S = 240.0
WINDOW_S = 4.0
OUTAGE_S = 8.0  # well within the raylets' 60 s wait for a GCS to come back
FAILURE_BOUND = 0  # an already running replica behind a live proxy needs no GCS to answer
API_KEY = "gcs-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    """A real redis-server on a free loopback port: ``(port, password, its data folder)``."""
    port, password, folder = free_loopback_port(), secrets.token_hex(16), tmp_path_factory.mktemp("redis")
    server = start_redis(port, folder, password)
    yield port, password, folder
    server.kill()
    server.wait(10)


@pytest.fixture(scope="module")
def ft_cluster(redis: tuple[int, str, Path]) -> Iterator[Cluster]:
    """A one-node loopback Ray whose GCS stores its tables in ``redis``; Serve on a free port."""
    port, password, _ = redis
    keep_ray_local()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_REDIS_ADDRESS", f"127.0.0.1:{port}")
        env.setenv("RAY_external_storage_namespace", "test-" + secrets.token_hex(4))
        env.setenv(API_KEY_ENV, API_KEY)  # the replicas read it from their node's environment
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "redis_password": password})
        ray.init(address=cluster.address)
        try:
            yield cluster
        finally:
            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()


def restart_gcs(cluster: Cluster, outage_s: float) -> float:
    """SIGKILL the head's GCS server, wait ``outage_s``, start it again; returns the kill time."""
    head = cluster.head_node
    (gcs,) = head.all_processes["gcs_server"]
    ray.shutdown()  # HTTP clients hold no Ray connection; this test's driver waits out the outage
    killed_at = time.monotonic()
    os.kill(gcs.process.pid, signal.SIGKILL)
    head.kill_gcs_server(check_alive=False)  # forget the dead process
    time.sleep(outage_s)
    head.start_gcs_server()
    ray.init(address=cluster.address)
    return killed_at


def test_serving_goes_on_while_the_gcs_restarts_from_redis(ft_cluster: Cluster, redis: tuple[int, str, Path],
                                                            tiny_model_dir: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tiny_model_dir, tmp_path / "model")
    http_port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    serve.run(build_app({"checkpoint": str(checkpoint), **ARGS}), name=APP, route_prefix="/",
              logging_config={"enable_access_log": False})
    wait_until(lambda: model_replicas() == {"RUNNING": 1}, 120, "the model replica")
    (replica_pid,) = model_replica_actors().values()
    started = time.monotonic()
    load = TimedLoad(f"http://127.0.0.1:{http_port}/v1/predict", CONCURRENCY, MAX_REQUESTS,
                     headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        time.sleep(2)  # connections open, batches flowing
        window_start = time.monotonic()
        time.sleep(WINDOW_S)
        failed_before = len(load.failures)
        killed_at = restart_gcs(ft_cluster, OUTAGE_S)
        restarted_at = time.monotonic()
        failed_during = len(load.failures) - failed_before
        wait_until(lambda: model_replicas() == {"RUNNING": 1}, 60, "serve.status() after the GCS restart")
        back_at = time.monotonic()
        time.sleep(WINDOW_S)
        window_end = time.monotonic()
    finally:
        load.stop(60)
    rates = [load.rate(window_start, killed_at), load.rate(killed_at, restarted_at), load.rate(back_at, window_end)]
    print(f"\nGCS restart: {load.sent} requests, {failed_before} failed before the kill, {failed_during} during the "
          f"{OUTAGE_S:.0f} s outage, {len(load.failures)} in all; req/s before, during, after: "
          f"{', '.join(f'{r:.1f}' for r in rates)}; serve.status() answered {back_at - restarted_at:.1f} s after the restart")
    assert time.monotonic() - started < TIME_LIMIT_S and load.sent < MAX_REQUESTS
    assert rates[1] > 0 and len(load.failures) <= FAILURE_BOUND, load.failures[:5]
    assert list(model_replica_actors().values()) == [replica_pid]  # the replica that served throughout

    # Still managed after the restart: a redeploy with 2 replicas scales up.
    serve.run(build_app({"checkpoint": str(checkpoint), **ARGS, "min_replicas": 2, "max_replicas": 2}), name=APP,
              route_prefix="/", logging_config={"enable_access_log": False})
    wait_until(lambda: model_replicas() == {"RUNNING": 2} and len(model_replica_actors()) == 2, 120, "2 replicas")

    port, password, redis_dir = redis
    keys = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning", "dbsize"],
                          env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True, timeout=10)
    assert int(keys.stdout) > 0  # the GCS tables are in Redis
    session = Path(ft_cluster.head_node.get_session_dir_path())
    files = [p for folder in (session, redis_dir) for p in folder.rglob("*") if p.is_file()]  # Ray's logs; the tables
    for secret, what in ((password, "the Redis password"), (API_KEY, "the endpoint's API key")):
        leaked = [p for p in files if secret.encode() in p.read_bytes()]  # the AOF files hold Serve's stored state
        assert not leaked, f"{what} is written in {leaked[:3]}"


def test_redis_refuses_a_missing_or_unsafe_password_and_starts_nothing(tmp_path: Path) -> None:
    def listening(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    port, default_was_free = free_loopback_port(), not listening(6379)  # 6379: where a config-less redis-server goes
    for bad in ("", "two words", 'a"quote'):
        with pytest.raises(RedisError, match="RAY_REDIS_PASSWORD"):
            start_redis(port, tmp_path / "redis", bad)
    assert not (tmp_path / "redis").exists() and not listening(port)
    assert not (default_was_free and listening(6379))
    config = redis_config(port, tmp_path, "s3cret")
    assert "bind 127.0.0.1\n" in config and 'requirepass "s3cret"' in config
