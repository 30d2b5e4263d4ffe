"""A Ray the project starts listens on 127.0.0.1 only.

Left alone, Ray 2.60 here bound its servers to the machine's other address and to all interfaces
(seen 2026-11-23: 0.0.0.0, ::, 192.0.2.2), and each Serve replica opens a gRPC server on ``[::]``
(seen 2026-11-30; ``ray_jobs.local_ray.serve_grpc_on_loopback`` rebinds it). That plain Ray is
not started again by the tests (it would listen beyond loopback). Serve runs in HAProxy mode
(``ray_jobs.local_ray_env``), whose stats and Prometheus listeners Ray 2.60 binds to every
interface and whose log it sends over UDP from 0.0.0.0; the probe requires HAProxy among the
processes, so its sockets are checked too.
"""

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from ray_jobs.local_ray import HEAD_ENV_PREFIXES, LOOPBACK_HOOK, SETUP_HOOK_VAR
from tests.support import ray_head

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

START_IN_PROCESS = """
from ray_jobs.local_ray import init_ray
init_ray(num_cpus=1)
processes = lambda: psutil.Process().children(recursive=True)
"""

JOIN_THE_HEAD = """
ray.init()  # RAY_ADDRESS: the head `ray start` made
gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
def processes():  # the head's GCS and raylet (ray start leaves them to init), and all they started
    ends = (f":{gcs_port}", f"={gcs_port}")
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(a.endswith(ends) for a in p.info["cmdline"] or ())]
    return {c for r in roots for c in [r, *r.children(recursive=True)]}
"""

PROBE = """
import json, socket, time, urllib.request, psutil, ray
from ray import serve
{start}
ray.get(ray.remote(lambda: 1).remote())
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:  # a Serve replica, with the gRPC server every replica opens
    def __call__(self, request):
        return "ok"

serve.run(Echo.bind(), name="probe", route_prefix="/")
assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read() == b"ok"
time.sleep(8)  # let the dashboard and its agents open their sockets
addrs, names = set(), set()
for proc in processes():
    try:
        names.add(proc.name())
        for c in proc.net_connections(kind="inet"):
            addrs.add(c.laddr.ip)
            if c.raddr:
                addrs.add(c.raddr.ip)
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps({"addrs": sorted(addrs), "names": sorted(names)}))
"""


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}  # wildcards (0.0.0.0, ::) are not: they listen everywhere


def test_project_ray_and_its_serve_replicas_use_loopback_only():
    _assert_loopback_with_haproxy(_probe(START_IN_PROCESS, os.environ))
    assert "type: local" in (Path.home() / "ray_bootstrap_config.yaml").read_text()


def test_the_loopback_recipes_head_and_its_serve_replicas_use_loopback_only(tmp_path):
    """docs/serving.md's recipe: ``eval "$(python -m ray_jobs.local_ray)"``, then ``ray start --head
    --node-ip-address=127.0.0.1 ...`` and a driver joining it: the same sockets as a Ray the project
    starts in-process (HAProxy mode, replicas' gRPC on loopback through the raylet's setup hook)."""
    token = tmp_path / "auth_token"  # the printed environment writes the token here, not to ~/.ray
    printed = subprocess.run(["bash", "-c", f'eval "$("{sys.executable}" -m ray_jobs.local_ray)" && env -0'], cwd=ROOT,
                             env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)}, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr[-2000:]
    head = dict(line.split("=", 1) for line in printed.stdout.split("\0") if "=" in line)
    assert head["RAY_AUTH_MODE"] == "token" and len(token.read_text()) == 64 and token.stat().st_mode & 0o777 == 0o600
    assert head["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and head[SETUP_HOOK_VAR] == LOOPBACK_HOOK
    recipe = {k: v for k, v in head.items() if k.startswith(HEAD_ENV_PREFIXES) or k in ("RAY_AUTH_MODE", SETUP_HOOK_VAR)}
    with ray_head(recipe) as (client, _, gcs):  # its own token (the suite's), as the recipe's would be
        _assert_loopback_with_haproxy(_probe(JOIN_THE_HEAD, {**client, **recipe, "RAY_ADDRESS": gcs}))


def _probe(start: str, env: Mapping[str, str]) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("{start}", start)], cwd=ROOT, env=dict(env),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_loopback_with_haproxy(seen: dict[str, list[str]]) -> None:
    assert "haproxy" in seen["names"], seen["names"]  # Serve's HAProxy mode is on, and its sockets are listed
    addrs = set(seen["addrs"])
    assert addrs and addrs <= LOOPBACK, addrs - LOOPBACK


def test_free_ports_are_below_the_ephemeral_range_and_bindable():
    """No connection's source port can take one between choosing it and a server binding it."""
    import socket

    from ray_jobs.local_ray import PRIVATE_PORTS_LOW, ephemeral_ports_low, free_loopback_ports

    ports = free_loopback_ports(8)
    assert len(set(ports)) == 8 and all(PRIVATE_PORTS_LOW <= p < ephemeral_ports_low() for p in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
