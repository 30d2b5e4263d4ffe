"""A Ray the project starts listens on 127.0.0.1 only; left alone, Ray would not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, time, psutil, ray
if sys.argv[1] == "project":
    from ray_jobs.local_ray import init_ray
    init_ray(num_cpus=1)
else:
    ray.init(num_cpus=1, include_dashboard=True)
ray.get(ray.remote(lambda: 1).remote())
time.sleep(8)  # let the dashboard and its agents open their sockets
addrs = set()
for proc in psutil.Process().children(recursive=True):
    try:
        for c in proc.net_connections(kind="inet"):
            addrs.add(c.laddr.ip)
            if c.raddr:
                addrs.add(c.raddr.ip)
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps(sorted(addrs)))
"""


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _addresses(mode: str) -> set[str]:
    """Every local and remote address of the Ray processes' inet sockets."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_project_ray_uses_loopback_only():
    addrs = _addresses("project")
    assert addrs and addrs <= LOOPBACK, addrs
    assert "type: local" in (Path.home() / "ray_bootstrap_config.yaml").read_text()


def test_plain_ray_would_be_noticed():
    assert _addresses("plain") - LOOPBACK, "the probe no longer sees Ray's non-loopback sockets"
