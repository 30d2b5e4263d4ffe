"""The environment a locally started Ray gets (``ray_jobs.local_ray_env``) and the HAProxy wrapper
that keeps Serve's HAProxy mode on loopback (``ray_jobs/haproxy-loopback``) and refuses overload in
front of the ingress (the real HAProxy before a stand-in ingress). The sockets of a real local Ray
with Serve in that mode are checked by tests/ray_jobs/test_local_ray.py."""

import base64
import hashlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from ray_jobs import HAPROXY_WRAPPER, local_ray_env
from ray_jobs.local_ray import free_loopback_port

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


class HeldUpstream(ThreadingHTTPServer):
    """An ingress stand-in on 127.0.0.1: states its budget (and its key's sha256, when it has a key) on its
    predictions' (POSTs') answers as the ingress does, holds POSTs while ``hold`` is clear, then answers
    200, or 401 to a POST without the key."""

    def __init__(self, budget: int, key: str | None) -> None:
        super().__init__(("127.0.0.1", 0), HeldHandler)
        self.budget, self.key, self.hold, self.arrived = budget, key, threading.Event(), 0
        self.hold.set()
        self.lock = threading.Lock()


class HeldHandler(BaseHTTPRequestHandler):
    server: HeldUpstream

    def answer(self, status: int, stated: bool) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if stated:
            self.send_header("x-sentiment-budget", str(self.server.budget))
            if self.server.key:
                self.send_header("x-sentiment-key", hashlib.sha256(self.server.key.encode()).hexdigest())
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:
        self.answer(200, stated=False)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        with self.server.lock:
            self.server.arrived += 1
        self.server.hold.wait(30)
        key = self.server.key
        keyed = not key or self.headers.get("authorization") in (f"Bearer {key}", basic(key))
        self.answer(200 if keyed else 401, stated=True)

    def log_message(self, *_: object) -> None:
        pass


def basic(user: str) -> str:
    """The Authorization header of basic auth with ``user`` and no password."""
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def haproxy_in_front(tmp_path: Path, upstream: int) -> tuple[subprocess.Popen[str], str]:
    """The real HAProxy through the wrapper, with Ray's shape of config (an app backend, the default and
    a router backend) in front of ``upstream``; returns the process and its URL once it answers."""
    port = free_loopback_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend http_frontend
    bind :{port}
    use_backend http-sentiment
backend default_backend
    http-request return status 404
backend http-sentiment
    server replica 127.0.0.1:{upstream}
backend http-sentiment-via-ingress-request-router
    server replica 127.0.0.1:{upstream}
""")
    env = {**os.environ, "SENTIMENT_HAPROXY_BINARY": os.environ["SENTIMENT_HAPROXY_BINARY"]}  # set by importing ray_jobs
    proc = subprocess.Popen([str(HAPROXY_WRAPPER), "-db", "-f", str(config)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"HAProxy did not start: {proc.communicate()[0]}")


@pytest.mark.parametrize("key", ["k-" + "7" * 30, None], ids=["keyed", "open"])
def test_haproxy_refuses_posts_past_the_budget_the_ingress_states(tmp_path: Path, key: str | None) -> None:
    upstream = HeldUpstream(budget=2, key=key)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    proc, url = haproxy_in_front(tmp_path, upstream.server_address[1])
    text = (tmp_path / "haproxy.cfg").read_text()
    assert text.count("return status 503") == 1  # the app backend's rules, not the default's or the router's
    assert "backend http-sentiment\n    stick-table" in text
    subprocess.run([str(HAPROXY_WRAPPER), "-c", "-f", str(tmp_path / "haproxy.cfg")], check=True, capture_output=True,
                   env={**os.environ, "SENTIMENT_HAPROXY_BINARY": "/bin/true"})
    assert (tmp_path / "haproxy.cfg").read_text() == text  # written once, however often Ray runs it on that config
    keyed = {"Authorization": f"Bearer {key}"} if key else {}

    def post_all(headers: list[dict[str, str]]) -> list[requests.Response]:
        with ThreadPoolExecutor(len(headers)) as pool:
            return list(pool.map(lambda h: requests.post(url, json={"text": "x"}, headers=h, timeout=60), headers))

    def held(headers: list[dict[str, str]], arriving: int) -> list[requests.Response]:
        """Send ``headers`` at once with the ingress holding; ``arriving`` of them must reach it."""
        upstream.hold.clear()
        upstream.arrived = 0
        sent = ThreadPoolExecutor(1).submit(post_all, headers)
        wait_until(lambda: upstream.arrived == arriving)
        assert requests.get(url, timeout=10).status_code == 200  # only POSTs are counted against the budget
        time.sleep(0.5)
        assert upstream.arrived == arriving  # the others never reached the ingress
        upstream.hold.set()
        return sent.result()

    try:
        answers = held([keyed] * 3, arriving=3)  # no budget stated yet: nothing is refused in front
        assert [a.status_code for a in answers] == [200] * 3
        assert not [a for a in answers if {"x-sentiment-budget", "x-sentiment-key"} & a.headers.keys()]  # removed

        if key:  # requests without the key are neither counted nor refused in front: the ingress answers them 401
            strangers = [{}, {}, {"Authorization": "Bearer nope"}, {"Authorization": basic("nope")}, {}]
            answers = held(strangers + [keyed], arriving=6)
            assert sorted(a.status_code for a in answers) == [200] + [401] * 5
            burst = [keyed] * 3 + [{"Authorization": basic(key)}] * 2  # bearer and basic auth alike
        else:
            burst = [{}] * 5
        answers = held(burst, arriving=2)
        refused = [a for a in answers if a.status_code == 503]
        assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503]
        assert all(a.headers["Retry-After"] == "1" and a.headers["content-type"] == "application/json" for a in refused)
        assert all("overloaded" in a.json()["detail"] for a in refused)
        assert [a.status_code for a in post_all([keyed] * 2)] == [200, 200]  # counted no longer once answered
    finally:
        upstream.hold.set()
        proc.kill()
        proc.wait(10)
        upstream.shutdown()


def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
