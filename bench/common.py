"""What the benchmarks share: the commit and device a figure names, IMDB reviews and tiny stand-ins
for ``--smoke``, and the measurements more than one benchmark takes (in-process scoring, an HTTP
load against a deployment, the plain training loop). No benchmark imports another."""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split

import argparse
import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import torch
from ray import serve

from ray_jobs.launcher import launch, prepare_data
from ray_jobs.local_ray import free_loopback_port, init_ray
from ray_jobs.worker import build_optimizer, build_scheduler
from sentiment.batching import iterate, make_collator, train_batches
from sentiment.config import DATA_DIR_ENV, PACKAGED_MODEL, Config, load_config
from sentiment.data import SpecialTokens, clean_text, model_inputs
from sentiment.model import build_model, load_tokenizer
from sentiment.model_folder import save_model_dir
from sentiment.predict import Predictor
from serve.app import build_app
from serve.schemas import ServeArgs

BATCH = 32
"""Texts per batch for in-process scoring and a deployment's ``max_batch_size``."""

# Each API's path under the endpoint and its request body for a list of texts.
API_PATHS = {"v1": "/v1/predict", "tei": "/predict", "v2": f"/v2/models/{ServeArgs.model_fields['model_name'].default}/infer"}
API_BODIES: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "v1": lambda texts: {"text": texts[0]} if len(texts) == 1 else {"texts": texts},
    "tei": lambda texts: {"inputs": texts[0] if len(texts) == 1 else texts},
    "v2": lambda texts: {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]},
    "infinity": lambda texts: {"input": texts, "model": "sentiment"},  # the Infinity peer's POST /classify
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def at_length(predictor: Predictor, length: int) -> Predictor:
    """The predictor with its token budget set to ``length``."""
    data = predictor.cfg.data.model_copy(update={"max_seq_length": length})
    predictor.cfg = predictor.cfg.model_copy(update={"data": data})
    return predictor


def labelled_reviews(n: int) -> tuple[list[str], np.ndarray]:
    """``n`` IMDB test reviews, half of each label (seeded), with their labels."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder or not (Path(folder) / "test.parquet").is_file():
        raise SystemExit(f"set {DATA_DIR_ENV} to a folder with IMDB test.parquet")
    df = pd.read_parquet(Path(folder) / "test.parquet", columns=["text", "label"])
    df = df.groupby("label").sample(n // 2, random_state=0).sample(frac=1, random_state=0)
    return df["text"].tolist(), df["label"].to_numpy()


def measure(predictor: Predictor, texts: list[str], labels: np.ndarray, batch_size: int) -> dict[str, float]:
    """Reviews/s (tokenized beforehand, as every backend shares the tokenizer) and accuracy."""
    ids = predictor.encode(texts, long_reviews="truncate").windows  # one window per review, whatever the checkpoint scores
    predictor.logits_for_ids(ids[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    logits = predictor.logits_for_ids(ids, batch_size)
    seconds = time.perf_counter() - start
    return {"reviews_per_s": len(texts) / seconds, "accuracy": float((logits.argmax(1) == labels).mean()),
            "mean_tokens": float(np.mean([len(x) for x in ids]))}


def device_name() -> str:
    """The GPU's name, or the CPU core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU, {os.cpu_count()} cores, no GPU"


ROOT = Path(__file__).resolve().parent.parent


SMOKE = ["data.max_train_samples=64", "data.max_val_samples=16", "data.max_test_samples=32", "train.epochs=1",
         "train.batch_size=8", "data.max_seq_length=64", "scaling.use_gpu=false", "train.precision=fp32",
         "scaling.num_workers=1", "scaling.cpus_per_worker=1", "tracking.mode=disabled"]


def run_job(cfg: Config, config_name: str) -> dict[str, Any]:
    """Prepare the data, run the job on this process's Ray (started if needed), and return its row:
    test accuracy, seconds of training (the epochs), of the job and of data preparation, and the
    best checkpoint."""
    from sentiment import layout, storage

    t0 = time.perf_counter()
    data = prepare_data(cfg)
    prep_s = time.perf_counter() - t0
    init_ray()
    t1 = time.perf_counter()
    summary = launch(cfg, data)
    job_s = time.perf_counter() - t1
    fs, _ = storage.filesystem(layout.storage_root(cfg))
    history = storage.read_json(fs, storage.join(summary["last_checkpoint"], layout.STATE_FILE))["history"]
    test = summary["test_metrics"]
    return {"device": device_name(), "date": dt.date.today().isoformat(), "commit": commit(), "config": config_name,
            "train_reviews": len(data["train"]), "test_reviews": test["test_count"], "epochs": len(history),
            "test_accuracy": test["test_accuracy"], "train_s": sum(h["epoch_time_s"] for h in history),
            "job_s": job_s, "prep_s": prep_s, "checkpoint": summary["best_checkpoint"]}


def paired_difference(correct: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float]:
    """Accuracy difference in points with a normal 95% interval, paired over the same reviews."""
    d = correct.astype(float) - baseline.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    return 100 * d.mean(), 100 * (d.mean() - half), 100 * (d.mean() + half)


def load_reviews(n: int) -> list[str]:
    """``n`` IMDB test reviews (seeded sample) from $IMDB_DATA_DIR."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder or not (Path(folder) / "test.parquet").is_file():
        sys.exit(f"set {DATA_DIR_ENV} to a folder with IMDB test.parquet")
    texts = pd.read_parquet(Path(folder) / "test.parquet", columns=["text"])["text"]
    return [clean_text(t) for t in texts.sample(n, random_state=0, replace=n > len(texts))]


def packaged_checkpoint(max_seq_length: int, folder: Path) -> Path:
    """The packaged MiniLM with a fresh head, saved as a servable model folder (speed needs no training)."""
    cfg = load_config(None, [f"model.name_or_path={PACKAGED_MODEL}", f"data.max_seq_length={max_seq_length}"])
    return save_model_dir(build_model(cfg.model), load_tokenizer(PACKAGED_MODEL), cfg, {}, folder)


def in_process(predictor: Predictor, reviews: list[str]) -> float:
    """Reviews per second of ``Predictor.predict_details`` on ``reviews``."""
    start = time.perf_counter()
    predictor.predict_details(reviews, batch_size=BATCH)
    return len(reviews) / (time.perf_counter() - start)


async def http_load(url: str, reviews: list[str], concurrency: int, texts_per_request: int = 1,
                    api: str = "v1") -> dict[str, float]:
    """Reviews/s and p50/p99 latency (ms) per request at ``concurrency``, after a warm-up; single-review
    requests unless ``texts_per_request`` > 1, in ``api``'s body (``API_BODIES``)."""
    warm = request_bodies(reviews[:max(BATCH, texts_per_request)], texts_per_request, api)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await timed_requests(session, url, warm, concurrency)
        latencies, wall = await timed_requests(session, url, request_bodies(reviews, texts_per_request, api), concurrency)
    return figures(latencies, wall, len(reviews))


def deploy(checkpoint: Path, backend: str = "auto", port: int | None = None, batch_wait_s: float | None = None,
           num_gpus: float = 0, long_reviews: str | None = None) -> str:
    """One fixed replica holding every core (and ``num_gpus``), on a loopback Serve (started unless
    ``port`` is given); returns the predict URL. ``long_reviews`` overrides the checkpoint's. Load
    shedding waits up to a minute here: this bench measures capacity (a closed loop of whole reviews
    at concurrency 32 is more than the default 1 s of queued work on 2 cores); bench/abuse.py
    measures the shedding."""
    port = port or start_loopback_serve()
    cores = float(os.cpu_count() or 1)
    app = build_app({"checkpoint": str(checkpoint), "num_cpus": cores, "num_gpus": num_gpus, "min_replicas": 1, "max_replicas": 1,
                     "wandb_mode": "disabled", "backend": backend, "long_reviews": long_reviews, "max_queue_wait_s": 60.0,
                     **({"batch_wait_timeout_s": batch_wait_s} if batch_wait_s is not None else {})})
    serve.run(app, name="bench", route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}/v1/predict"


def bench_config(args: argparse.Namespace, shape: str, storage: str) -> Config:
    """The config both paths use for one shape (``fixed`` pads every batch to the max length)."""
    length = args.max_len
    return load_config(None, [
        f"model.name_or_path={args.model}", f"data.max_seq_length={length}",
        f"data.pad_to_multiple_of={length if shape == 'fixed' else 8}",
        f"data.max_train_samples={args.reviews}", "data.max_val_samples=16", "data.max_test_samples=16",
        "train.epochs=1", f"train.batch_size={args.batch}", f"train.log_every_steps={10**6}",
        f"train.precision={'bf16' if torch.cuda.is_available() else 'fp32'}",
        f"scaling.use_gpu={torch.cuda.is_available()}", f"scaling.cpus_per_worker={args.threads}",
        "tracking.mode=disabled", "run.max_failures=0", f"run.storage_path={storage}",
        f"run.name=bench-{shape}-{time.strftime('%Y%m%d-%H%M%S')}",  # a new run: an old one would be resumed
    ])


def plain_loop(cfg: Config, data: dict[str, Any], compile_backend: str | None = None,
               warmup: int = 0) -> tuple[float, int, int]:
    """One epoch of a plain loop; returns (seconds, tokens incl. padding, samples) of its timed part.

    Args:
        compile_backend: ``torch.compile`` the model with this backend (``inductor``; ``eager`` only
            traces, for CPU smoke runs); None runs it eagerly.
        warmup: the first batches run untimed (compilation happens there).
    """
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    split = data["train"]
    inputs = model_inputs(split, SpecialTokens.of(tokenizer), cfg.data)
    model = build_model(cfg.model).to(device).train()
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    batches = train_batches([len(x) for x in inputs], cfg.train.batch_size, seed=cfg.data.seed, epoch=0,
                            group_by_length=cfg.data.length_grouping)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, len(batches))
    collate = make_collator(tokenizer, cfg.data.pad_to_multiple_of)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    tokens, samples, start = 0, 0, time.perf_counter()
    for i, (_, batch) in enumerate(iterate(inputs, split.labels, batches, collate)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            tokens, samples, start = 0, 0, time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        tokens += batch["input_ids"].numel()
        samples += batch["input_ids"].shape[0]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens, samples


def project_path(cfg: Config, data: dict[str, Any]) -> float:
    """Samples/s of the real job (Ray Train + DeepSpeed, 1 worker), from its epoch report."""
    summary = launch(cfg, data)
    return float(summary["best_metrics"]["train_samples_per_s"])


def tiny_bert(folder: Path, positions: int = 512) -> Path:
    """A 2-layer, 32-wide BERT taking ``positions`` tokens, with the packaged MiniLM's tokenizer,
    saved to ``folder`` (the benchmarks' ``--smoke`` stand-in and the tests' tiny model)."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = load_tokenizer(PACKAGED_MODEL)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=positions)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_imdb(folder: Path, n: int = 400) -> Path:
    """``train.parquet`` and ``test.parquet`` of ``n`` short reviews whose words give the label away."""
    words = {0: "dull awful boring", 1: "great brilliant fun"}
    rows = pd.DataFrame({"text": [f"{words[i % 2]} film {i}" for i in range(n)], "label": [i % 2 for i in range(n)]})
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows.to_parquet(folder / f"{split}.parquet", index=False)
    return folder


def request_bodies(reviews: list[str], texts_per_request: int, api: str = "v1") -> list[dict[str, Any]]:
    """``api``'s request bodies of ``texts_per_request`` reviews each (``{"text": ...}`` for one on /v1)."""
    return [API_BODIES[api](reviews[i:i + texts_per_request]) for i in range(0, len(reviews), texts_per_request)]


async def timed_requests(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float]:
    """Post every body once, ``concurrency`` at a time; per-request seconds and the wall time."""
    todo = iter(bodies)
    latencies: list[float] = []

    async def worker() -> None:
        for body in todo:
            start = time.perf_counter()
            async with session.post(url, json=body) as r:
                r.raise_for_status()
                await r.read()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def figures(latencies: list[float], wall: float, reviews: int) -> dict[str, float]:
    """Reviews/s and p50/p99 latency (ms) per request."""
    ms = np.array(latencies) * 1000
    return {"reviews_per_s": reviews / wall, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def start_loopback_serve() -> int:
    """A local Ray and Serve with HTTP on 127.0.0.1; returns the port."""
    init_ray()
    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port

