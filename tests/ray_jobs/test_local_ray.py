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
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, socket, time, urllib.request, psutil, ray
from ray import serve
from ray_jobs.local_ray import init_ray
init_ray(num_cpus=1)
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
for proc in psutil.Process().children(recursive=True):
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
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "haproxy" in seen["names"], seen["names"]  # Serve's HAProxy mode is on, and its sockets are listed
    addrs = set(seen["addrs"])
    assert addrs and addrs <= LOOPBACK, addrs - LOOPBACK
    assert "type: local" in (Path.home() / "ray_bootstrap_config.yaml").read_text()


def test_free_ports_are_below_the_ephemeral_range_and_bindable():
    """No connection's source port can take one between choosing it and a server binding it."""
    import socket

    from ray_jobs.local_ray import PRIVATE_PORTS_LOW, ephemeral_ports_low, free_loopback_ports

    ports = free_loopback_ports(8)
    assert len(set(ports)) == 8 and all(PRIVATE_PORTS_LOW <= p < ephemeral_ports_low() for p in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
