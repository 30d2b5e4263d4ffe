"""The environment a locally started Ray gets (``ray_jobs.local_ray_env``) and the HAProxy wrapper
that keeps Serve's HAProxy mode on loopback (``ray_jobs/haproxy-loopback``). The sockets of a
real local Ray with Serve in that mode are checked by tests/test_local_ray.py."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ray_jobs import HAPROXY_WRAPPER, local_ray_env

CHOSEN_BY_CALLER = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_BINARY_PATH")

CONFIG = """global
    log stderr format raw local0 info
frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
frontend public
    bind 10.1.2.3:80
listen stats
  bind *:8404
  stats enable
"""


def test_haproxy_mode_is_on_with_the_wrapper_when_the_caller_chose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in CHOSEN_BY_CALLER:
        monkeypatch.delenv(key, raising=False)
    env = local_ray_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(HAPROXY_WRAPPER)
    assert os.access(env["SENTIMENT_HAPROXY_BINARY"], os.X_OK) and Path(env["SENTIMENT_HAPROXY_BINARY"]) != HAPROXY_WRAPPER
    assert env["RAY_SERVE_HAPROXY_LOG_TARGET"].startswith("stderr")  # no UDP syslog sockets on 0.0.0.0
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5  # Ray's 30 s made each shutdown wait 30 s
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


@pytest.mark.parametrize("key", CHOSEN_BY_CALLER)
def test_a_caller_who_set_serves_mode_keeps_it(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    for other in CHOSEN_BY_CALLER:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(key, "0")
    env = local_ray_env()
    assert not [k for k in env if "SERVE" in k or "HAPROXY" in k]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"


def test_the_wrapper_binds_wildcards_to_loopback_and_runs_the_real_binary(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    fake = tmp_path / "haproxy"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    args = ["-db", "-f", str(config), "-sf", "123"]
    out = subprocess.run([str(HAPROXY_WRAPPER), *args], env={**os.environ, "SENTIMENT_HAPROXY_BINARY": str(fake)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "args").read_text().split("\n")[:-1] == args
    binds = [line.strip() for line in config.read_text().splitlines() if line.strip().startswith("bind")]
    assert binds == ["bind 127.0.0.1:9101", "bind 127.0.0.1:8000", "bind 10.1.2.3:80", "bind 127.0.0.1:8404"]
    assert config.read_text().replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404") == CONFIG


# bind addresses as written and as HAProxy gets them: every wildcard form on loopback, the rest as they were
BINDS = [
    *[(w, "127.0.0.1:8000") for w in (":8000", "*:8000", "0.0.0.0:8000", "[::]:8000", ":::8000", "ipv4@:8000",
                                      "ipv4@*:8000", "ipv4@0.0.0.0:8000", "ipv6@:::8000", "ipv6@[::]:8000")],
    ("\t*:8000 proto h2", "127.0.0.1:8000 proto h2"), (":8000-8010", "127.0.0.1:8000-8010"),
    *[(s, s) for s in ("127.0.0.1:8000", "10.1.2.3:80", "::1:8000", "[::1]:8000", "ipv6@::1:8000", "unix@/run/haproxy.sock")],
]


def test_the_wrapper_binds_every_wildcard_form_to_loopback(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text("".join(f"frontend f{i}\n    bind {given}\n" for i, (given, _) in enumerate(BINDS)))
    out = subprocess.run([str(HAPROXY_WRAPPER), "-f", str(config)], env={**os.environ, "SENTIMENT_HAPROXY_BINARY": "/bin/true"},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    binds = [line.split("bind", 1)[1].strip() for line in config.read_text().splitlines() if "bind" in line]
    assert binds == [expected for _, expected in BINDS]


def test_the_wrapper_without_the_real_binary_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SENTIMENT_HAPROXY_BINARY"}
    out = subprocess.run([str(HAPROXY_WRAPPER), "-v"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "SENTIMENT_HAPROXY_BINARY" in out.stderr
