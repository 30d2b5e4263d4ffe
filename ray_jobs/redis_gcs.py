"""Redis for Ray's GCS fault tolerance: a local ``redis-server`` on 127.0.0.1 with a password.

Without external storage the GCS (the head's table of nodes, actors, jobs and Serve's state) lives
in the head's memory: if it dies, the cluster dies. With ``RAY_REDIS_ADDRESS`` and
``--redis-password`` given to ``ray start --head``, the GCS writes its tables to Redis, a
restarted GCS reads them back, and raylets, replicas and HTTP proxies keep running meanwhile
(they wait up to ``RAY_gcs_rpc_server_reconnect_timeout_s``, 60 s by default).

``python -m ray_jobs.redis_gcs --dir ~/ray-gcs-redis`` starts Debian's ``redis-server`` for the
local recipe (docs/operations.md, "The head restarts"): bound to 127.0.0.1 only, ``requirepass`` from
``$RAY_REDIS_PASSWORD``, append-only persistence in ``--dir``. The password goes to Redis on its
standard input, never on a command line, in a file or in a log line. On a cluster use a managed,
replicated Redis instead (cluster.yaml).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ray_jobs.local_ray import LOOPBACK

PASSWORD_ENV = "RAY_REDIS_PASSWORD"
DEFAULT_PORT = 6380  # not 6379: that is Ray's own GCS port by default


class RedisError(RuntimeError):
    """Redis could not be started or reached; the message says why."""


def redis_config(port: int, data_dir: Path, password: str) -> str:
    """The ``redis.conf`` text: loopback only, a password, append-only files in ``data_dir``."""
    if not password or any(c.isspace() or c == '"' for c in password):
        raise RedisError(f"${PASSWORD_ENV} must be a non-empty password without spaces or quotes")
    return "\n".join([
        f"bind {LOOPBACK}",
        f"port {port}",
        "protected-mode yes",
        f'requirepass "{password}"',
        f"dir {data_dir}",
        "appendonly yes",  # the GCS tables survive a Redis restart too
        "save \"\"",
        "daemonize no",
        f"logfile {data_dir / 'redis.log'}",
        "",
    ])


def ping(port: int, password: str) -> bool:
    """True if the Redis on 127.0.0.1:``port`` answers PING with this password."""
    out = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(port), "--no-auth-warning", "ping"],
                         env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() == "PONG"


def start_redis(port: int, data_dir: Path, password: str, timeout_s: float = 20.0) -> subprocess.Popen:
    """Start ``redis-server`` on 127.0.0.1:``port`` (its own session) and wait until it answers.

    Raises:
        RedisError: ``redis-server`` is not installed, exits at once, or does not answer within
            ``timeout_s`` (the message names its log file).
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RedisError("redis-server not found: apt-get install redis-server (scripts/setup-system.sh does)")
    config = redis_config(port, data_dir, password)  # before starting: a bad password starts nothing
    data_dir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    server.stdin.write(config)
    server.stdin.close()
    deadline = time.monotonic() + timeout_s
    while not ping(port, password):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RedisError(f"redis-server on {LOOPBACK}:{port} did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.2)
    return server


def ray_start_line(port: int) -> str:
    """The ``ray start --head`` command that keeps the GCS in this Redis (the password stays a variable)."""
    return (f"RAY_REDIS_ADDRESS={LOOPBACK}:{port} ray start --head --node-ip-address={LOOPBACK} "
            f"--dashboard-host={LOOPBACK} --disable-usage-stats --redis-password=\"${PASSWORD_ENV}\"")


def main(argv: list[str] | None = None) -> int:
    """Start Redis for the GCS in the background and print the ``ray start`` line to use."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where Redis keeps its files (and log)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV, "")
    try:
        server = start_redis(args.port, args.dir.expanduser().resolve(), password)
    except RedisError as err:
        print(f"redis_gcs: {err}", file=sys.stderr)
        return 1
    print(f"redis-server pid {server.pid} on {LOOPBACK}:{args.port}, files in {args.dir}")
    print(f"start the head with:\n  {ray_start_line(args.port)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
