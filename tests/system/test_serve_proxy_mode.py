"""The endpoint behind Ray's own HTTP proxy: a ``ray start --head`` on 127.0.0.1 and ``serve run``
joining it through ``RAY_ADDRESS``, with HAProxy mode off (``RAY_SERVE_ENABLE_HA_PROXY=0``, the
choice of a user who wants Ray's proxy; docs/serving.md's loopback recipe turns HAProxy on, and
tests/ray_jobs/test_local_ray.py checks that recipe's sockets).

tests/system/test_serve_hostile.py runs the abuse phases in HAProxy mode (a Ray the project starts); here
the same slow unauthenticated uploads go through Ray's proxy, which hands each request to the
ingress replica as soon as its headers are in: the 401 must still come from the headers alone, and
an ordinary client must stay served.

Then, on the same head, what KubeRay's operator does with k8s/rayservice.yaml: ``serve deploy`` of
its ``serveConfigV2`` through the dashboard, and calls to the endpoint it makes. Changed for a
loopback test: the host (127.0.0.1, not the pod network), the port, ``storage_path`` (a local folder
whose ``best.json`` names the checkpoint, for the manifest's S3 bucket), the replica counts and
CPUs (2 cores), and queue limits small enough that a burst of 64 clients overflows the ingress, so
that Serve's own router sheds some of it; the rest is the manifest's. Every 503 of that burst, the
router's included, must carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from bench import abuse
from ray_jobs.local_ray import free_loopback_port
from serve.schemas import API_KEY_ENV
from tests.support import BIN, ROOT, make_checkpoint, manifest, ray_head, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

KEY = "proxy-mode-key-" + os.urandom(8).hex()
HAPROXY_MODE = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_BINARY_PATH",
                "SENTIMENT_HAPROXY_BINARY", "RAY_SERVE_HAPROXY_LOG_TARGET", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")
PHASE_S = 8.0  # ~300 ordinary requests: the p99 is not one request caught by the 200 connects at the start
P99_FLOOR_S = 0.05  # as in tests/system/test_serve_hostile.py
BURST_LIMITS = 8  # the ingress then holds 8 + 4 requests and Serve's router queues 4 more: a burst of 64 overflows


def serve_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "serve"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def rayservice_config(port: int, storage: Path) -> dict:
    """k8s/rayservice.yaml's serveConfigV2, changed only as the module docstring says."""
    config = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    app["args"].update(storage_path=str(storage), num_cpus=0.5, min_replicas=1, max_replicas=1, ingress_replicas=1,
                       max_ongoing_requests=BURST_LIMITS, max_batch_size=BURST_LIMITS, max_queued_requests=BURST_LIMITS // 2)
    return config


def test_slow_unauthenticated_uploads_leave_an_ordinary_client_served_behind_rays_proxy(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in HAPROXY_MODE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    monkeypatch.setenv(API_KEY_ENV, KEY)  # the head's processes read it: replicas take the key from their node
    checkpoint = make_checkpoint(tiny_model_dir, tmp_path / "model")
    with ray_head() as (env, dashboard, gcs):
        client = {**env, "RAY_ADDRESS": gcs}
        port = free_loopback_port()
        started = serve_cli("start", "--http-host=127.0.0.1", f"--http-port={port}", env=client)
        assert started.returncode == 0, started.stderr[-2000:]
        ran = serve_cli("run", "--non-blocking", "serve.app:build_app", f"checkpoint={checkpoint}", "num_cpus=0.5",
                        "max_replicas=1", "wandb_mode=disabled", env=client)
        assert ran.returncode == 0, ran.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(answers, 120, "the endpoint behind Ray's proxy")
        assert requests.get(f"{url}/healthz", timeout=5).json()["auth_required"] is True
        assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"]  # Ray's proxy, not HAProxy
        time.sleep(1)
        result = abuse.summary(asyncio.run(abuse.run(url, KEY, PHASE_S, slow=200, burst=0, explainers=0,
                                                     phases=("alone", "slow uploads"))))
        deploy_the_rayservice_config_and_call_it(checkpoint, tmp_path, port, dashboard, client)
    print(f"\nslow uploads behind Ray's proxy (tiny model): {result}")
    bound = 2 * max(result["alone"]["ordinary"]["p99_s"], P99_FLOOR_S)
    slow = result["slow uploads"]
    # Each is refused without its body: 401 from the headers, or (rarely, with 200 arriving at once)
    # 503 from Ray's router shedding before the ingress, which is a refusal too.
    assert sum(slow["others"].values()) == 200 and set(slow["others"]) <= {"401", "503"}, slow["others"]
    assert slow["others"].get("401", 0) >= 100, slow["others"]
    assert set(slow["ordinary"]["statuses"]) == {"200"} and slow["ordinary"]["p99_s"] < bound


def deploy_the_rayservice_config_and_call_it(checkpoint: Path, tmp_path: Path, port: int, dashboard: str,
                                            client: dict[str, str]) -> None:
    """``serve deploy`` the RayService's config over the running app (declarative: it replaces it),
    as KubeRay does; ready on the manifest's readiness path; answers with the key from the node."""
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "best.json").write_text(json.dumps({"checkpoint": str(checkpoint)}))  # what a sweep records
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(rayservice_config(port, storage)))
    deployed = serve_cli("deploy", str(config), f"--address={dashboard}", env=client)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    probe = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]

    def ready() -> bool:
        status = serve_cli("status", f"--address={dashboard}", env=client).stdout
        app = yaml.safe_load(status)["applications"].get("sentiment", {})
        return app.get("status") == "RUNNING" and requests.get(url + probe["readinessProbe"]["httpGet"]["path"], timeout=5).ok

    wait_until(ready, 180, "the RayService config deployed and ready")
    assert requests.post(f"{url}/v1/predict", json={"text": "fine"}, timeout=30).status_code == 401
    reply = requests.post(f"{url}/v1/predict", json={"text": "A fun movie."}, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30)
    assert reply.status_code == 200 and reply.json()["predictions"][0]["label"] in ("negative", "positive")
    model = requests.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert Path(model["path"]) == checkpoint  # "best" under the manifest's storage_path
    burst = abuse.summary(asyncio.run(abuse.run(url, KEY, 4.0, slow=0, burst=64, explainers=0, phases=("burst",))))["burst"]
    print(f"\nburst of 64 behind Ray's proxy (tiny model, small queues): {burst}")
    assert burst["others"]["statuses"].get("503", 0) > 0 and "200" in burst["others"]["statuses"], burst
    assert set(burst["others"]["statuses"]) == {"200", "503"}, burst  # never a 503 without Retry-After, nothing else
