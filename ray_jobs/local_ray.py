"""Start or join Ray so that a Ray the project starts stays on 127.0.0.1.

Left alone, a local Ray listens on all interfaces and its dashboard probes cloud metadata
addresses (169.254.169.254, metadata.google.internal) even with usage stats off. With
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and a ``~/ray_bootstrap_config.yaml`` that says
``provider: {type: local}``, every socket stays on loopback (checked by tests/ray_jobs/test_local_ray.py).
On a real cluster (``RAY_ADDRESS`` set, e.g. under ``ray job submit``) we only join.

    eval "$(python -m ray_jobs.local_ray)"   # then `ray start --head --node-ip-address=127.0.0.1 ...`

prints the same environment for a Ray started with ``ray start`` (docs/serving.md's loopback recipe).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shlex
import socket
from pathlib import Path

import ray

from ray_jobs import local_ray_env

LOOPBACK = "127.0.0.1"
PRIVATE_PORTS_LOW = 20000  # above Ray's default worker ports (10002-19999)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
BOOTSTRAP = Path("~/ray_bootstrap_config.yaml")
LOOPBACK_HOOK = "ray_jobs.local_ray.serve_grpc_on_loopback"
# Where a Ray worker process finds its setup hook at start (ray/_private/ray_constants.py,
# WORKER_PROCESS_SETUP_HOOK_ENV_VAR): what ``ray.init(runtime_env={"worker_process_setup_hook": ...})``
# becomes; in a raylet's environment, every worker of that node runs the hook.
SETUP_HOOK_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
HEAD_ENV_PREFIXES = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED", "RAY_SERVE_", "SENTIMENT_HAPROXY_")


def keep_ray_local() -> None:
    """Set the environment that keeps a locally started Ray silent and on loopback.

    Writes ``~/ray_bootstrap_config.yaml`` (``provider: {type: local}``) only when the file does
    not exist: on a head node made by ``ray up`` that file is the cluster's own and is left alone.
    """
    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)
    if os.environ.get("SENTIMENT_HAPROXY_BINARY"):  # HAProxy mode is the project's: its ports are this Ray's own
        stats, metrics = free_loopback_ports(2)
        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"], os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(stats), str(metrics)
    # Ray read the variable when it was imported; if that was before ray_jobs, correct it here.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    bootstrap = BOOTSTRAP.expanduser()
    if not bootstrap.exists():
        bootstrap.write_text("# written by bert-sentiment: a local Ray, no cloud provider to probe\nprovider: {type: local}\n")


def ephemeral_ports_low() -> int:
    """The first port of the kernel's ephemeral range (source ports of outgoing connections)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (HAProxy's stats and Prometheus ports,
    8404 and 9101 by default, would make a second local Serve, or one after a crash, fail to start).

    They are drawn between Ray's worker ports (10002-19999) and the kernel's ephemeral range, so
    neither a Ray process nor any connection's source port takes one before its server binds it.
    """
    ephemeral_low = ephemeral_ports_low()
    candidates = random.sample(range(PRIVATE_PORTS_LOW, max(PRIVATE_PORTS_LOW + count, ephemeral_low)), k=64 + count)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise OSError(f"no {count} free TCP ports on {LOOPBACK} between {PRIVATE_PORTS_LOW} and {ephemeral_low}")


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    return free_loopback_ports(1)[0]


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in ``RAY_ADDRESS`` or start a loopback-only Ray in this process.

    Args:
        num_cpus: CPUs for a locally started Ray (default: all cores); ignored when joining.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        join_cluster(os.environ["RAY_ADDRESS"])
        return
    keep_ray_local()
    ray.init(
        address="local",  # a new instance: never join another Ray found running on this machine
        num_cpus=num_cpus,
        _node_ip_address=LOOPBACK,
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        log_to_driver=True,
        runtime_env={"worker_process_setup_hook": LOOPBACK_HOOK},
    )


def serve_grpc_on_loopback() -> None:
    """Bind what Ray 2.60's Serve replicas open on every interface to 127.0.0.1 instead.

    Each replica starts a gRPC server for calls between deployments on ``[::]:0``, hard-coded
    (``ray/serve/_private/replica.py``), whatever the node's address. A local Ray runs this in
    each of its worker processes (``worker_process_setup_hook``) before any replica code is
    imported, so that server listens on loopback like the rest of the Ray (tests/ray_jobs/test_local_ray.py).
    """
    from ray._common import tls_utils

    bind = tls_utils.add_port_to_grpc_server
    if getattr(bind, "loopback", False):
        return

    def on_loopback(server: object, address: str) -> int:
        return bind(server, address.replace("[::]:", f"{LOOPBACK}:", 1))

    on_loopback.loopback = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = on_loopback


def join_cluster(address: str) -> None:
    """Join the Ray cluster at ``address``, failing with one line if its Ray or Python differs.

    Ray itself compares this process's Ray and Python versions with the ones the cluster recorded
    in its GCS when it started, and raises a multi-line ``RuntimeError("Version mismatch: ...")``.

    Raises:
        ConfigError: the versions differ; names both and the address.
    """
    from sentiment.config import ConfigError

    try:
        ray.init(log_to_driver=True)
    except RuntimeError as err:
        if not str(err).startswith("Version mismatch"):
            raise
        detail = " ".join(str(err).removeprefix("Version mismatch:").split())
        raise ConfigError(
            f"Ray version mismatch with the cluster at {address}: {detail} "
            f"Run the job with the cluster's Ray and Python (pyproject.toml pins ray)."
        ) from None


def ensure_auth_token() -> Path | None:
    """The token file Ray reads (``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``), written with
    a new random token, readable by its owner only, when there is none; None when ``$RAY_AUTH_TOKEN``
    holds the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path


def head_env() -> dict[str, str]:
    """The environment for ``ray start --head`` on 127.0.0.1 that gives it what ``init_ray`` gives a
    Ray it starts in-process: loopback only and silent, Serve's HAProxy mode (``local_ray_env``),
    each worker's Serve gRPC server on loopback (the setup hook, through the raylet's environment),
    and token auth on with a token made if there is none."""
    keep_ray_local()
    ensure_auth_token()
    env = {k: v for k, v in os.environ.items() if k.startswith(HEAD_ENV_PREFIXES)}
    return env | {"RAY_AUTH_MODE": "token", SETUP_HOOK_VAR: LOOPBACK_HOOK}


def main(argv: list[str] | None = None) -> None:
    """Print ``export`` lines of ``head_env()`` for a shell's ``eval``."""
    argparse.ArgumentParser(
        prog="python -m ray_jobs.local_ray",
        description="Print the environment for a loopback `ray start --head` (use: eval \"$(python -m ray_jobs.local_ray)\"): "
                    "loopback only, Serve's HAProxy mode, Serve's gRPC on loopback, token auth (a token is written to "
                    "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, mode 600, when there is none).",
    ).parse_args(argv)
    for key, value in sorted(head_env().items()):
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
