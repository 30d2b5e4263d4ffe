"""bench.second_client against real HTTP servers on 127.0.0.1 (the standard library's): rounds,
ratios paired by round, the bearer key sent, and a refusal stopping the run."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.second_client import main


@contextmanager
def server(delay_s: float, status: int = 200) -> Iterator[tuple[str, list[dict]]]:
    """A loopback server answering ``POST /v1/predict`` after ``delay_s`` with ``status``; yields
    its base URL and what it received (the authorization header and the JSON body)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), "body": body})
            time.sleep(delay_s)
            answer = json.dumps({"predictions": [{"label": "positive"}]}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_rounds_and_ratios_over_the_first_server(small_imdb: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMDB_DATA_DIR", str(small_imdb))
    with server(0.0) as (fast, fast_seen), server(0.02) as (slow, _):
        rows = main(["--server", f"fast={fast}", "--server", f"slow={slow}", "--key", "k1",
                     "--concurrency", "1", "4", "--requests", "12", "--rounds", "2"])
    assert len(rows) == 2 * 2 * 2  # rounds x concurrencies x servers
    assert len(fast_seen) == 2 * (12 + 1 + 12 + 4)  # timed and warm-up requests, each round
    assert {s["auth"] for s in fast_seen} == {"Bearer k1"} and all(set(s["body"]) == {"text"} for s in fast_seen)
    *_, one, four = capsys.readouterr().out.splitlines()
    for line, c in ((one, 1), (four, 4)):
        median, low, high = map(float, re.match(rf"slow / fast at concurrency {c}: ([0-9.]+)x \(([0-9.]+)-([0-9.]+)\) req/s, "
                                                r"[0-9.]+x \([0-9.]+-[0-9.]+\) p50$", line).groups())
        assert low <= median <= high < 1.0, line  # 20 ms a request against none: slower, by every round


def test_an_answer_other_than_200_stops_the_run_naming_it(small_imdb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMDB_DATA_DIR", str(small_imdb))
    with server(0.0) as (fine, _), server(0.0, status=503) as (refusing, _):
        with pytest.raises(SystemExit, match=r"/v1/predict answered 503"):
            main(["--server", f"fine={fine}", "--server", f"refusing={refusing}", "--concurrency", "2",
                  "--requests", "4", "--rounds", "1"])


def test_a_server_that_does_not_answer_stops_the_run_naming_it(small_imdb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMDB_DATA_DIR", str(small_imdb))
    with server(0.0) as (fine, _), socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # a port nothing listens on
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with pytest.raises(SystemExit, match=r"/v1/predict: ConnectionRefusedError"):
            main(["--server", f"fine={fine}", "--server", f"gone={gone}", "--concurrency", "2", "--requests", "4",
                  "--rounds", "1"])


def test_one_server_is_not_a_comparison() -> None:
    with pytest.raises(SystemExit):
        main(["--server", "only=http://127.0.0.1:1"])
