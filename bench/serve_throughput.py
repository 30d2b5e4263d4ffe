"""HTTP throughput and latency of the Serve deployment against a peer, one run.

    python -m bench.serve_throughput                      # packaged MiniLM-L6 at 128 tokens vs in-process
    python -m bench.serve_throughput --peer plain --checkpoint <model folder> --backends torch auto
    python -m bench.serve_throughput --peer apis --checkpoint <model folder>   # /v1 vs TEI vs v2
    python -m bench.serve_throughput --api tei --checkpoint <model folder>     # /v1 vs TEI only
    python -m bench.serve_throughput --smoke --checkpoint <model folder> [--peer plain|apis]   # CI-sized

``--peer plain`` compares with the server a user would write by hand (``bench/plain_server.py``:
FastAPI + uvicorn, one process, torch fp32, one text per request), started as its own process on
the same cores, with the same client and the same reviews; then the project's endpoint with each
of ``--backends``. The CPU set and nice level of both servers and of the client are printed.
Printed last: project req/s divided by plain req/s, and the p50 latency ratio, per concurrency.

``--peer apis`` compares the endpoint's own API with the protocols it also speaks, on one
deployment (truncating as above) with the same client and reviews: ``/v1/predict`` (``{"text"}``),
Hugging Face / TEI's ``/predict`` (``{"inputs"}``) and the Open Inference Protocol's
``/v2/models/{name}/infer`` (one BYTES tensor). It first checks that the three give the same
probabilities, then measures each at every concurrency in two passes of half the reviews, in
opposite orders (v1, tei, v2 then v2, tei, v1), so drift on the machine falls on every API alike.
Printed last: each protocol's req/s and p50 divided by ``/v1``'s, per concurrency.

Reviews are real IMDB test reviews from $IMDB_DATA_DIR. One model replica (fixed, holding every
core, as the in-process baseline does) serves single-review requests from an aiohttp client at each
concurrency; the baseline is ``Predictor.predict_details`` on the same reviews in batches of 32
(the deployment's max_batch_size). Printed last: HTTP reviews/s divided by in-process reviews/s.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on loopback)

# isort: split

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import psutil
import ray
from ray import serve

from bench.common import (
    API_BODIES,
    API_PATHS,
    BATCH,
    deploy,
    figures,
    http_load,
    in_process,
    load_reviews,
    packaged_checkpoint,
    request_bodies,
    start_loopback_serve,
    timed_requests,
)
from ray_jobs.local_ray import free_loopback_port
from sentiment.predict import Predictor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model folder to serve (default: packaged MiniLM, untrained head)")
    p.add_argument("--max-seq-length", type=int, default=128, help="for the packaged model (default 128)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="timed requests per concurrency")
    p.add_argument("--peer", choices=("inprocess", "plain", "apis"), default="inprocess",
                   help="inprocess: Predictor in this process; plain: a hand-written FastAPI server "
                   "(bench/plain_server.py); apis: the endpoint's TEI and v2 routes against its /v1")
    p.add_argument("--api", nargs="+", choices=list(API_PATHS), help="with --peer apis (implied): the routes to "
                   "measure besides /v1, its baseline (default: tei v2)")
    p.add_argument("--backends", nargs="+", default=["auto"], help="the endpoint's backends to measure (--peer plain)")
    p.add_argument("--batch-wait-timeout-s", type=float, default=None, help="the endpoint's batch wait (default: build_app's)")
    p.add_argument("--smoke", action="store_true", help="CI-sized: 24 requests at concurrency 1 and 4")
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests = [1, 4], 24
    if args.api:
        args.peer = "apis"
    args.apis = ["v1", *[a for a in (args.api or ["tei", "v2"]) if a != "v1"]]
    return args


def start_plain_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    """``bench/plain_server.py`` in its own process on 127.0.0.1; waits until it answers."""
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.plain_server", "--checkpoint", str(checkpoint), "--port", str(port)])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1/predict"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the plain server exited with {proc.returncode}")
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the plain server did not answer within 180 s")


def conditions(pid: int) -> str:
    """CPU set and nice level of a process."""
    proc = psutil.Process(pid)
    return f"CPUs {sorted(proc.cpu_affinity())}, nice {proc.nice()}"


def replica_pid() -> int:
    """The process of the Serve model replica (its name holds the deployment's)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any("SentimentModel" in part for part in proc.info["cmdline"] or []):
            return proc.pid
    raise RuntimeError("no SentimentModel replica process found")


def against_plain(args: argparse.Namespace, checkpoint: Path, reviews: list[str]) -> list[dict[str, Any]]:
    """The plain server, then the endpoint with each backend, each at every concurrency.

    The endpoint truncates as the plain server does (one window per review), whatever the
    checkpoint's ``data.long_reviews``: scoring whole reviews in windows is ~3x the work per review.
    """
    rows: list[dict[str, Any]] = []
    proc, url = start_plain_server(checkpoint)
    try:
        where = conditions(proc.pid)
        rows += [{"server": "plain", "where": where, "concurrency": c, **asyncio.run(http_load(url, reviews, c))}
                 for c in args.concurrency]
    finally:
        proc.terminate()
        proc.wait(30)
    try:
        port = start_loopback_serve()
        for backend in args.backends:
            url = deploy(checkpoint, backend, port, args.batch_wait_timeout_s, long_reviews="truncate")
            where = conditions(replica_pid())
            info = json.loads(urllib.request.urlopen(url.replace("/predict", "/model"), timeout=30).read())
            name = f"project {info['backend']}" + (f" ({backend})" if backend != info["backend"] else "")
            rows += [{"server": name, "where": where, "concurrency": c, **asyncio.run(http_load(url, reviews, c))}
                     for c in args.concurrency]
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def report_ratios(rows: list[dict[str, Any]], key: str, baseline: str) -> None:
    """The table, then each other ``key``'s req/s and p50 divided by ``baseline``'s per concurrency (last)."""
    table = pd.DataFrame(rows)
    print(table.drop(columns="where", errors="ignore").to_markdown(index=False, floatfmt=".1f"))
    base = table[table[key] == baseline].set_index("concurrency")
    for name, part in table[table[key] != baseline].groupby(key, sort=False):
        print(f"{name} / {baseline}: " + ", ".join(
            f"{r.reviews_per_s / base.loc[r.concurrency, 'reviews_per_s']:.2f}x req/s and "
            f"{r.p50_ms / base.loc[r.concurrency, 'p50_ms']:.2f}x p50 at concurrency {r.concurrency}"
            for r in part.itertuples()))


def report_against_plain(rows: list[dict[str, Any]], reviews: list[str], max_len: int) -> None:
    """The conditions, the table, then each project server's ratios to the plain one (last)."""
    print(f"\n{len(reviews)} IMDB test reviews, single-review POSTs, each truncated to {max_len} tokens by both servers, "
          f"{os.cpu_count()} cores; "
          f"client: this process ({conditions(os.getpid())})")
    for server, where in pd.DataFrame(rows).groupby("server", sort=False)["where"].first().items():
        print(f"{server}: {where}")
    report_ratios(rows, "server", "plain")


def same_answers(base: str, reviews: list[str]) -> None:
    """Each API's probabilities for each of ``reviews`` equal /v1's (to 1e-5), or the run stops: a
    route that answers something else is not measured. One review per request, one request at a
    time: each is then a batch of its own (the int8 export's dynamic quantization makes a review's
    probabilities depend on the batch it is scored in)."""
    def call(path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=120).read())

    labels = call(API_PATHS["v2"].removesuffix("/infer"))["parameters"]["labels"]  # v2's probabilities' order
    for review in reviews:
        (v1,) = [p["probabilities"] for p in call(API_PATHS["v1"], API_BODIES["v1"]([review]))["predictions"]]
        tei = {s["label"]: s["score"] for s in call(API_PATHS["tei"], API_BODIES["tei"]([review]))}
        outputs = {o["name"]: o for o in call(API_PATHS["v2"], API_BODIES["v2"]([review]))["outputs"]}
        v2 = dict(zip(labels, map(float, outputs["probabilities"]["data"])))
        for api, got in (("tei", tei), ("v2", v2)):
            if got.keys() != v1.keys() or any(abs(v1[k] - got[k]) > 1e-5 for k in v1):
                raise SystemExit(f"{api} answers {got} where /v1 answers {v1}")


def against_apis(args: argparse.Namespace, checkpoint: Path, reviews: list[str]) -> list[dict[str, Any]]:
    """One deployment (``auto`` backend, truncating), measured through each API at every concurrency."""
    apis = args.apis
    half = len(reviews) // 2
    rows: list[dict[str, Any]] = []
    try:
        base = deploy(checkpoint, "auto", long_reviews="truncate").removesuffix(API_PATHS["v1"])
        same_answers(base, reviews[:8])

        async def measure(concurrency: int) -> list[dict[str, Any]]:
            timed: dict[str, tuple[list[float], float]] = {api: ([], 0.0) for api in apis}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
                for api in apis:  # warm-up
                    await timed_requests(session, base + API_PATHS[api], request_bodies(reviews[:BATCH], 1, api), concurrency)
                for order, part in ((apis, reviews[:half]), (apis[::-1], reviews[half:])):
                    for api in order:
                        latencies, wall = await timed_requests(session, base + API_PATHS[api],
                                                               request_bodies(part, 1, api), concurrency)
                        timed[api] = (timed[api][0] + latencies, timed[api][1] + wall)
            return [{"api": api, "concurrency": concurrency, **figures(*timed[api], len(reviews))} for api in apis]

        for c in args.concurrency:
            rows += asyncio.run(measure(c))
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and return its figures.

    The in-process baseline is measured again just before each concurrency level (the replicas
    idle meanwhile), so a load change on the machine during the run hits both sides of a ratio.
    """
    args = parse_args(argv)
    reviews = load_reviews(args.requests)
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else packaged_checkpoint(args.max_seq_length, Path(tmp) / "m")
        if args.peer == "plain":
            measured = against_plain(args, checkpoint, reviews)
            report_against_plain(measured, reviews, Predictor.load(checkpoint).cfg.data.max_seq_length)
            return {"rows": measured}
        if args.peer == "apis":
            measured = against_apis(args, checkpoint, reviews)
            info = Predictor.load(checkpoint).cfg.data.max_seq_length
            routes = ", ".join(f"{api} {API_PATHS[api]}" for api in args.apis)
            print(f"\n{len(reviews)} IMDB test reviews, one per request, truncated to {info} tokens, {os.cpu_count()} "
                  f"cores, one deployment ({routes}); client: this process ({conditions(os.getpid())})")
            report_ratios(measured, "api", "v1")
            return {"rows": measured}
        predictor = Predictor.load(checkpoint)
        predictor.predict_details(reviews[:BATCH], batch_size=BATCH)  # warm-up
        url = deploy(checkpoint)
        try:
            for c in args.concurrency:
                baseline = in_process(predictor, reviews)
                rows[c] = {**asyncio.run(http_load(url, reviews, c)), "in_process_reviews_per_s": baseline}
                rows[c]["ratio"] = rows[c]["reviews_per_s"] / baseline
        finally:
            serve.shutdown()
            ray.shutdown()
    print(f"\n{len(reviews)} IMDB test reviews, {predictor.cfg.data.max_seq_length} tokens max, "
          f"{os.cpu_count()} cores, one replica; in-process: Predictor, batches of {BATCH}")
    print(f"{'concurrency':>11} {'HTTP rev/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'in-process rev/s':>17}")
    for c, r in rows.items():
        http, p50, p99, local = r["reviews_per_s"], r["p50_ms"], r["p99_ms"], r["in_process_reviews_per_s"]
        print(f"{c:>11} {http:>10.1f} {p50:>8.1f} {p99:>8.1f} {local:>17.1f}")
    print("HTTP / in-process throughput: " + ", ".join(f"{r['ratio']:.2f} at concurrency {c}" for c, r in rows.items()))
    return rows


if __name__ == "__main__":
    main()
