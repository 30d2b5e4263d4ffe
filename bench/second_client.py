"""A second, independent closed-loop HTTP client for the serving comparison: the standard library's
threads and ``http.client`` (one keep-alive connection per thread), sharing no code with
``bench/serve_throughput.py`` and its aiohttp client, to check that the servers' ratios are theirs
and not a client's.

    python -m bench.second_client --server plain=http://127.0.0.1:8001 \\
        --server endpoint=http://127.0.0.1:8000 [--key KEY] [--concurrency 1 8 32] [--requests 400] [--rounds 3]

Each server is ``NAME=BASE_URL`` and answers ``POST /v1/predict`` with ``{"text": ...}`` (the
endpoint's route; ``bench/plain_server.py`` has the same). ``--key`` goes to every server as a
bearer token (the plain server ignores it). Reviews: raw IMDB test reviews from $IMDB_DATA_DIR, a
seeded sample, as a user would send them. Each round measures every server at every concurrency,
one after the other, the order rotated by one place each round: ``concurrency`` warm-up requests,
then ``--requests`` timed ones, each thread sending its next review as soon as its last is
answered. Any answer but 200 stops the run (a refused request is not a like-for-like figure).
Printed: req/s, p50 and p99 per round, then each server's req/s and p50 over the first server's
per concurrency, paired by round: the median and the range over the rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq

ROUTE = "/v1/predict"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action="append", required=True, metavar="NAME=BASE_URL",
                   help="a server to measure (two or more; ratios are over the first)")
    p.add_argument("--key", default=os.environ.get("SENTIMENT_API_KEY"), help="bearer token (default: $SENTIMENT_API_KEY)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="timed requests per server, concurrency and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    servers = [s.split("=", 1) for s in args.server]
    if len(servers) < 2 or any(len(s) != 2 or not s[1].startswith("http://") for s in servers):
        p.error("give two or more --server NAME=http://HOST:PORT")
    args.servers = [(name, base.rstrip("/")) for name, base in servers]
    return args


def load_reviews(n: int) -> list[str]:
    """``n`` raw IMDB test reviews, a seeded sample, from $IMDB_DATA_DIR."""
    folder = os.environ.get("IMDB_DATA_DIR", "")
    path = Path(folder) / "test.parquet"
    if not path.is_file():
        sys.exit("set IMDB_DATA_DIR to a folder with IMDB test.parquet")
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return random.Random(0).choices(texts, k=n) if n > len(texts) else random.Random(0).sample(texts, n)


def closed_loop(base: str, reviews: list[str], concurrency: int, key: str | None) -> list[float]:
    """Send every review once from ``concurrency`` threads, each one at a time; their latencies (s).

    Raises:
        SystemExit: an answer other than 200, naming the server, the status and its body, or no
            answer at all (a connection error or timeout), naming it.
    """
    where = urlsplit(base)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    bodies = [json.dumps({"text": review}).encode() for review in reviews]
    counter, lock, latencies, failures = itertools.count(), threading.Lock(), [], []

    def worker() -> None:
        connection = HTTPConnection(where.hostname, where.port, timeout=120)
        try:
            while not failures:
                with lock:
                    i = next(counter)
                if i >= len(bodies):
                    return
                start = time.perf_counter()
                try:
                    connection.request("POST", ROUTE, bodies[i], headers)
                    answer = connection.getresponse()
                    text = answer.read()
                except (OSError, HTTPException) as err:
                    failures.append(f"{base}{ROUTE}: {type(err).__name__}: {err}")
                    return
                if answer.status != 200:
                    failures.append(f"{base}{ROUTE} answered {answer.status}: {text[:300]!r}")
                    return
                with lock:
                    latencies.append(time.perf_counter() - start)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(failures[0])
    return latencies


def measure(base: str, reviews: list[str], concurrency: int, key: str | None) -> dict[str, float]:
    """A warm-up of ``concurrency`` requests, then the timed ones: req/s, p50 and p99 (ms)."""
    closed_loop(base, reviews[:concurrency], concurrency, key)
    start = time.perf_counter()
    latencies = sorted(closed_loop(base, reviews, concurrency, key))
    wall = time.perf_counter() - start
    return {"req_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def spread(values: list[float]) -> str:
    """``median (min-max)``."""
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def ratios(rows: list[dict], servers: list[str]) -> list[str]:
    """Each server's req/s and p50 over the first server's, per concurrency, paired by round."""
    by = {(r["server"], r["concurrency"], r["round"]): r for r in rows}
    base, lines = servers[0], []
    for name in servers[1:]:
        for c in sorted({r["concurrency"] for r in rows}):
            rounds = sorted({r["round"] for r in rows if r["concurrency"] == c})
            rps = [by[name, c, n]["req_s"] / by[base, c, n]["req_s"] for n in rounds]
            p50 = [by[name, c, n]["p50_ms"] / by[base, c, n]["p50_ms"] for n in rounds]
            lines.append(f"{name} / {base} at concurrency {c}: {spread(rps)} req/s, {spread(p50)} p50")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure, print the rounds and the ratios (last), and return the rows."""
    args = parse_args(argv)
    reviews = load_reviews(args.requests)
    rows = []
    print(f"{len(reviews)} raw IMDB test reviews, one per POST {ROUTE}; {args.rounds} rounds; client: "
          f"threads + http.client, pid {os.getpid()}, {os.cpu_count()} cores")
    print(f"{'round':>5} {'server':>12} {'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for n in range(1, args.rounds + 1):
        turn = (n - 1) % len(args.servers)
        for c in args.concurrency:
            for name, base in args.servers[turn:] + args.servers[:turn]:
                row = {"round": n, "server": name, "concurrency": c, **measure(base, reviews, c, args.key)}
                rows.append(row)
                print(f"{n:>5} {name:>12} {c:>11} {row['req_s']:>8.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}", flush=True)
    print("\n".join(ratios(rows, [name for name, _ in args.servers])))
    return rows


if __name__ == "__main__":
    main()
