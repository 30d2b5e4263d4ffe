"""HTTP throughput and latency of the Serve deployment against a peer, one run.

    python -m bench.serve_throughput                      # packaged MiniLM-L6 at 128 tokens vs in-process
    python -m bench.serve_throughput --peer plain --checkpoint <model folder> --backends torch auto
    python -m bench.serve_throughput --peer apis --checkpoint <model folder>   # /v1 vs TEI vs v2
    python -m bench.serve_throughput --api tei --checkpoint <model folder>     # /v1 vs TEI only
    python -m bench.serve_throughput --smoke --checkpoint <model folder> [--peer plain|apis]   # CI-sized

``--peer plain`` compares with the server a user would write by hand (``bench/plain_server.py``:
FastAPI + uvicorn, one process, torch fp32, one text per request) and, with ``--infinity``, with
Infinity (a serving engine with dynamic batching, torch engine, in a virtualenv of its own that the
bench makes on first use), each its own process on the same cores, with the same client and the
same reviews, against the project's endpoint with each of ``--backends``: all stay up, and
``--rounds`` rounds (3) measure them interleaved at every concurrency (the order rotated each
round), each round ending with the backend's in-process rate (``Predictor``, batches of 32). Every
server truncates to the checkpoint's ``max_seq_length``. The CPU set and nice level of each server
and of the client are printed, and the CPU milliseconds per request of every process on the path
(``/proc`` accounting through psutil); with ``--profile DIR``, one more pass of the endpoint after
the rounds (not in the figures) has py-spy sample its ingress and model replica, and their hottest
functions are printed. Printed last, per backend and concurrency: the endpoint's
req/s and p50 over each peer's and its req/s over its backend in-process, each as the median and the
range over the rounds.

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
import re
import signal
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

INFINITY_VENV = Path(__file__).resolve().parent.parent / ".venv-infinity"
INFINITY_REQUIREMENTS = ("infinity-emb[torch,server]==0.0.78", "transformers>=4.47,<4.58", "numpy<2")


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
    p.add_argument("--infinity", action="store_true", help="with --peer plain: Infinity (torch engine) as a second peer, "
                   "in a virtualenv of its own made on first use (.venv-infinity)")
    p.add_argument("--profile", type=Path, help="with --peer plain: after the rounds, one more pass of the endpoint at "
                   "each concurrency with py-spy on its ingress and model replica (into this folder; not in the figures), "
                   "and their hottest functions printed")
    p.add_argument("--whole-reviews", action="store_true", help="with --peer plain: also the endpoint scoring whole "
                   "reviews (long_reviews=chunks, one model row per window), its windows/s set against the plain "
                   "server's reviews/s (truncating)")
    p.add_argument("--rounds", type=int, default=3, help="with --peer plain: interleaved rounds; ratios are printed "
                   "as the median and range over them (default 3)")
    p.add_argument("--smoke", action="store_true", help="CI-sized: 24 requests at concurrency 1 and 4, 2 rounds")
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.rounds = [1, 4], 24, 2
    if args.api:
        args.peer = "apis"
    args.apis = ["v1", *[a for a in (args.api or ["tei", "v2"]) if a != "v1"]]
    return args


def wait_for(proc: subprocess.Popen, health: str, what: str, timeout_s: float = 180) -> None:
    """Return once ``health`` answers; stop the run if ``proc`` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode}")
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{what} did not answer within {timeout_s:.0f} s")


def start_plain_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    """``bench/plain_server.py`` in its own process on 127.0.0.1; waits until it answers."""
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.plain_server", "--checkpoint", str(checkpoint), "--port", str(port)])
    wait_for(proc, f"http://127.0.0.1:{port}/healthz", "the plain server")
    return proc, f"http://127.0.0.1:{port}/v1/predict"


def infinity_python() -> Path:
    """The Python of Infinity's own virtualenv (``.venv-infinity``), made from the registry the first
    time (a few minutes): Infinity 0.0.78 needs transformers < 4.58 and numpy < 2, so it cannot share
    the project's. Its torch is the one setup installs (``$TORCH_SPEC``, ``$TORCH_INDEX``)."""
    python = INFINITY_VENV / "bin" / "python"
    stamp = INFINITY_VENV / ".installed-0.0.78"
    if stamp.exists():
        return python
    print(f"making {INFINITY_VENV} (Infinity 0.0.78 and what it needs, from the registry)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    torch_spec, index = os.environ.get("TORCH_SPEC", "torch==2.13.0"), os.environ.get("TORCH_INDEX")
    if torch_spec:
        subprocess.run([*pip, *(["--index-url", index] if index else []), torch_spec], check=True)
    subprocess.run([*pip, *INFINITY_REQUIREMENTS], check=True)
    stamp.touch()
    return python


def infinity_model_folder(checkpoint: Path, max_len: int, folder: Path) -> Path:
    """The checkpoint's model folder as Infinity reads it: the same files (linked), with the
    tokenizer's ``model_max_length`` set to the checkpoint's ``max_seq_length``, where Infinity's
    text-classification pipeline truncates (from the head)."""
    folder.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.name != "tokenizer_config.json":
            (folder / path.name).symlink_to(path.resolve())
    tokenizer = json.loads((checkpoint / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "model_max_length": max_len}))
    return folder


def start_infinity(checkpoint: Path, max_len: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    """Infinity (torch engine, CPU, dynamic batches of up to 32, no telemetry) serving the
    checkpoint on 127.0.0.1 in its own process and virtualenv; waits until it answers."""
    python = infinity_python()
    folder = infinity_model_folder(checkpoint, max_len, tmp / "infinity-model")
    port = free_loopback_port()
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(python.parent / "infinity_emb"), "v2", "--model-id", str(folder), "--served-model-name",
                             "sentiment", "--engine", "torch", "--device", "cpu", "--batch-size", str(BATCH),
                             "--no-bettertransformer", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env)
    wait_for(proc, f"http://127.0.0.1:{port}/health", "Infinity", timeout_s=300)
    return proc, f"http://127.0.0.1:{port}/classify"


def same_scores(plain_url: str, infinity_url: str, reviews: list[str]) -> None:
    """Infinity's probabilities for each of ``reviews`` equal the plain server's (both fp32, both
    keeping the head of a long review) to 1e-4, or the run stops: a peer that scores something
    else is not measured."""
    def post(url: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=120).read())

    for review in reviews:
        plain = post(plain_url, API_BODIES["v1"]([review]))["predictions"][0]["probabilities"]
        (scores,) = post(infinity_url, API_BODIES["infinity"]([review]))["data"]
        infinity = {s["label"]: s["score"] for s in scores}
        if infinity.keys() != plain.keys() or any(abs(plain[k] - infinity[k]) > 1e-4 for k in plain):
            raise SystemExit(f"Infinity scores {infinity} where the plain server scores {plain}")


def conditions(pid: int) -> str:
    """CPU set and nice level of a process."""
    proc = psutil.Process(pid)
    return f"CPUs {sorted(proc.cpu_affinity())}, nice {proc.nice()}"


def replica_pid(deployment: str = "SentimentModel") -> int:
    """The process of a Serve replica of ``deployment`` (its name holds the deployment's)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(deployment in part for part in proc.info["cmdline"] or []):
            return proc.pid
    raise RuntimeError(f"no {deployment} replica process found")


def start_profiles(folder: Path, tag: str) -> list[tuple[Path, subprocess.Popen]]:
    """py-spy sampling the ingress and the model replica (100 Hz, without pausing them), each into
    ``folder/<deployment>-<tag>.txt`` as collapsed stacks, until :func:`stop_profiles`."""
    folder.mkdir(parents=True, exist_ok=True)
    started = []
    for deployment in ("SentimentAPI", "SentimentModel"):
        out = folder / f"{deployment}-{tag}.txt"
        started.append((out, subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                               str(replica_pid(deployment)), "--format", "raw", "--nonblocking",
                                               "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return started


def stop_profiles(started: list[tuple[Path, subprocess.Popen]], top: int = 8) -> None:
    """Stop the profilers and print each replica's hottest functions by share of samples (self time)."""
    for out, proc in started:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        print(f"{out.name}: " + "; ".join(f"{share:.0%} {where}" for where, share in hottest(out, top)))


def hottest(collapsed: Path, top: int) -> list[tuple[str, float]]:
    """The ``top`` leaf functions of py-spy's collapsed stacks (``frame;frame;leaf count`` lines),
    line numbers dropped, with their share of all samples."""
    counts: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        counts[leaf] = counts.get(leaf, 0) + int(count)
    total = sum(counts.values()) or 1
    return [(where, n / total) for where, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


# Which process on the request path a command line belongs to (first match), for the CPU accounting.
ROLES = (("model replica", "SentimentModel"), ("ingress replica", "SentimentAPI"), ("HAProxy", "haproxy"),
         ("plain server", "bench.plain_server"), ("infinity", "infinity_emb"), ("Ray's own", "ray"))


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """User + system CPU seconds so far of every process on the request path, by pid, with its role:
    this process (``client``: the aiohttp client, and the in-process baseline), the servers, and Ray's
    own processes (raylet, GCS, dashboard, Serve's controller and proxy)."""
    seen: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        times, command = proc.info["cpu_times"], " ".join(proc.info["cmdline"] or [])
        role = "client" if proc.info["pid"] == os.getpid() else next((r for r, needle in ROLES if needle in command), None)
        if role and times:
            seen[proc.info["pid"]] = (role, times.user + times.system)
    return seen


def cpu_ms_per_request(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                       requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each role between two :func:`cpu_seconds` (a process started
    in between counts from zero), and their sum as ``cpu total``."""
    by_role: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used = seconds - before.get(pid, (role, 0.0))[1]
        by_role[role] = by_role.get(role, 0.0) + used * 1000 / requests
    return {**{f"cpu {r}": by_role.get(r, 0.0) for r in ("client", *(r for r, _ in ROLES))},
            "cpu total": sum(by_role.values())}


def measured_load(url: str, reviews: list[str], concurrency: int, api: str) -> dict[str, float]:
    """:func:`bench.common.http_load` with the CPU each process on the path spent per request
    (its warm-up requests counted: they are the same single-review POSTs)."""
    before = cpu_seconds()
    load = asyncio.run(http_load(url, reviews, concurrency, api=api))
    return {**load, **cpu_ms_per_request(before, cpu_seconds(), len(reviews) + min(BATCH, len(reviews)))}


def against_plain(args: argparse.Namespace, checkpoint: Path, reviews: list[str], max_len: int,
                  tmp: Path) -> list[dict[str, Any]]:
    """The plain server (and Infinity, with ``--infinity``) and the endpoint with each backend,
    interleaved in ``args.rounds`` rounds.

    Every server stays up for the whole run. Each round measures, at every concurrency, each server
    one after the other, the order rotated by one place each round, then the backend's in-process
    rate (``Predictor`` in this process, batches of 32, the servers idle): a drift on the machine
    falls on every side of every ratio. The endpoint truncates as the peers do (one window per
    review), whatever the checkpoint's ``data.long_reviews``: scoring whole reviews in windows is
    ~3x the work per review. With ``--whole-reviews`` each backend is then deployed again scoring
    whole reviews (``chunks``) and measured in rounds of its own against the same peers; every row
    has ``windows_per_s`` (its reviews/s times the windows each review costs that server: 1 when
    truncating).
    """
    rows: list[dict[str, Any]] = []
    procs: list[subprocess.Popen] = []
    try:
        proc, url = start_plain_server(checkpoint)
        procs.append(proc)
        peers = [("plain", url, conditions(proc.pid), "v1")]
        if args.infinity:
            proc, infinity_url = start_infinity(checkpoint, max_len, tmp)
            procs.append(proc)
            same_scores(url, infinity_url, reviews[:8])
            peers.append(("infinity", infinity_url, conditions(proc.pid), "infinity"))
        port = start_loopback_serve()
        ways = ("truncate", "chunks") if args.whole_reviews else ("truncate",)
        for backend, long_reviews in [(b, way) for b in args.backends for way in ways]:
            url = deploy(checkpoint, backend, port, args.batch_wait_timeout_s, long_reviews=long_reviews)
            info = json.loads(urllib.request.urlopen(url.replace("/predict", "/model"), timeout=30).read())
            name = (f"project {info['backend']}" + (f" ({backend})" if backend != info["backend"] else "")
                    + (", whole reviews" if long_reviews == "chunks" else ""))
            servers = [*peers, (name, url, conditions(replica_pid()), "v1")]
            predictor = Predictor.load(checkpoint, backend=backend, long_reviews=long_reviews)
            predictor.predict_details(reviews[:BATCH], batch_size=BATCH)  # warm-up
            windows = {server: 1.0 for server, *_ in peers} | {name: float(predictor.encode(reviews).counts.mean())}
            for n in range(1, args.rounds + 1):
                turn = (n - 1) % len(servers)
                for c in args.concurrency:
                    for server, at, where, api in servers[turn:] + servers[:turn]:
                        load = measured_load(at, reviews, c, api)
                        rows.append({"pair": name, "round": n, "server": server, "where": where, "concurrency": c,
                                     "long_reviews": long_reviews if server == name else "truncate",
                                     **load, "windows_per_s": load["reviews_per_s"] * windows[server]})
                local = in_process(predictor, reviews)
                rows.append({"pair": name, "round": n, "server": "in-process", "where": conditions(os.getpid()),
                             "concurrency": 0, "long_reviews": long_reviews, "reviews_per_s": local,
                             "windows_per_s": local * windows[name]})
            for c in args.concurrency if args.profile else []:  # a pass of its own: sampling costs CPU
                profiles = start_profiles(args.profile, f"{info['backend']}-{long_reviews}-c{c}")
                asyncio.run(http_load(url, reviews, c))
                stop_profiles(profiles)
            serve.delete("bench")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
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


def spread(values: pd.Series) -> str:
    """``median (min-max)`` of per-round ratios."""
    return f"{values.median():.2f}x ({values.min():.2f}-{values.max():.2f})"


def peer_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Per endpoint backend and concurrency, over the rounds: the median and range of the endpoint's
    req/s and p50 over each peer's, paired by round, and of its req/s over its backend in-process.
    An endpoint that scores whole reviews (``long_reviews`` chunks) is also set against each peer by
    its windows/s over the peer's reviews/s (every peer truncates: one window a review)."""
    table = pd.DataFrame(rows)
    lines = []
    for name, part in table.groupby("pair", sort=False):
        local = part[part.server == "in-process"].set_index("round")["reviews_per_s"]
        http = part[part.server != "in-process"]
        peers = [p for p in http.server.unique() if p != name]
        whole = "long_reviews" in part and bool((part.long_reviews == "chunks").any())
        measured = http.pivot_table(index=["concurrency", "round"], columns="server",
                                    values=["reviews_per_s", "p50_ms", *(["windows_per_s"] if whole else [])])
        for c, per_round in measured.groupby(level="concurrency"):
            rps, p50 = per_round.droplevel("concurrency")["reviews_per_s"], per_round.droplevel("concurrency")["p50_ms"]
            lines += [f"{name} / {peer} at concurrency {c}: {spread(rps[name] / rps[peer])} req/s, "
                      f"{spread(p50[name] / p50[peer])} p50" for peer in peers]
            if whole:
                wps = per_round.droplevel("concurrency")["windows_per_s"]
                lines += [f"{name} / {peer} at concurrency {c}: {spread(wps[name] / rps[peer])} its windows/s over "
                          f"the peer's reviews/s" for peer in peers]
            lines.append(f"{name} / in-process at concurrency {c}: {spread(rps[name] / local)} reviews/s")
    return lines


def report_against_plain(rows: list[dict[str, Any]], reviews: list[str], max_len: int, rounds: int) -> None:
    """The conditions, the tables (figures per round; CPU per request), then each project server's
    ratios to each peer and to its backend in-process, median and range over the rounds (last)."""
    whole = (pd.DataFrame(rows).long_reviews == "chunks").any()
    print(f"\n{len(reviews)} IMDB test reviews, single-review POSTs, each truncated to {max_len} tokens by every server"
          + (f" but the one scoring whole reviews (windows of {max_len} tokens)" if whole else "")
          + f", {os.cpu_count()} cores, {rounds} interleaved rounds; in-process: Predictor, batches of {BATCH} "
          f"(concurrency 0 in the table)")
    for server, where in pd.DataFrame(rows).groupby("server", sort=False)["where"].first().items():
        print(f"{server}: {where}")
    table = pd.DataFrame(rows).drop(columns=["where", "pair"]).sort_values(["server", "concurrency", "round"], kind="stable")
    cpu = [c for c in table.columns if c.startswith("cpu ") and table[c].fillna(0).any()]  # the roles seen
    print(table.drop(columns=[c for c in table.columns if c.startswith("cpu ")]).to_markdown(index=False, floatfmt=".1f"))
    http = table[table.server != "in-process"]
    print("\nCPU ms per request by process (median over the rounds):")
    print(http.groupby(["server", "concurrency"], sort=False)[cpu].median().reset_index().to_markdown(index=False, floatfmt=".1f"))
    print("\n".join(peer_ratios(rows)))


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
            max_len = Predictor.load(checkpoint).cfg.data.max_seq_length
            measured = against_plain(args, checkpoint, reviews, max_len, Path(tmp))
            report_against_plain(measured, reviews, max_len, args.rounds)
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
