"""One prepared GPU run: every figure the project claims on a GPU, in one JSON and one table.

    python -m bench.gpu_suite --out "$OUT"                  # on a GPU machine, staged as bench/NOTES.md says
    python -m bench.gpu_suite --smoke --out /tmp/gpu-smoke  # CPU, CI-sized: every step, on a tiny BERT

The whole GPU measurement is one command (about 7 minutes
on one H100/H200), tested beforehand on CPU with ``--smoke``. Reviews come from
``$IMDB_DATA_DIR``. Three parts, one local Ray on 127.0.0.1 for all of them:

1. **Training throughput** at the bert-base shape (``BertConfig()``'s defaults, random weights:
   no hub), 512 tokens, micro-batch 32, bf16, with every batch padded to 512 (``fixed``) and at
   real review lengths (``real``, padded to a multiple of 8): a plain eager PyTorch loop, the
   same loop under ``torch.compile`` (timed after a warm-up that compiles), and the project's job
   (``ray_jobs.launcher.launch``, one GPU worker) with DeepSpeed ZeRO-0 and ZeRO-2, whose samples/s
   come from its own epoch report (first steps included, as in the eager loop). MFU: training
   FLOPs per token ``6 N + 12 L T d`` (N weights outside the embeddings, L layers, d width, T the
   padded length) over a bf16 matmul peak measured in this run.
2. **Time to accuracy**: ``configs/minilm-full.yaml`` (packaged MiniLM, all of IMDB, 512 tokens,
   head+tail) through the real job: test accuracy and seconds of training.
3. **Inference and serving** of that checkpoint: in-process ``Predictor`` reviews/s (bf16 on a
   GPU) at 128 and 512 tokens, then one Ray Serve GPU replica over HTTP, with 64-text requests and
   with single-review requests at concurrency 64: reviews/s, p50, p99, and HTTP / in-process.

Written: ``<out>/gpu_suite.json`` (device, date, commit, command and every figure). Printed last:
the table of the figures that have targets.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve

from bench.common import (
    ROOT,
    SMOKE,
    at_length,
    bench_config,
    commit,
    deploy,
    device_name,
    http_load,
    in_process,
    labelled_reviews,
    load_reviews,
    measure,
    plain_loop,
    project_path,
    run_job,
    tiny_bert,
)
from ray_jobs.launcher import prepare_data
from ray_jobs.local_ray import init_ray
from sentiment.config import Config, load_config
from sentiment.model import load_tokenizer
from sentiment.predict import Predictor

GPU = torch.cuda.is_available()
DEVICE, DTYPE = ("cuda", torch.bfloat16) if GPU else ("cpu", torch.float32)  # inference and serving


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_suite.json (on the GPU machine: $OUT)")
    p.add_argument("--train-reviews", type=int, default=4096, help="reviews per training-throughput epoch")
    p.add_argument("--requests", type=int, default=2048, help="reviews sent to the endpoint per load")
    p.add_argument("--commit", default=None, help="the commit measured (default: git's; the GPU machine's copy has no .git)")
    p.add_argument("--smoke", action="store_true", help="CPU, CI-sized: a tiny BERT, 64 tokens, a few dozen reviews")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_reviews, args.requests = 64, 64
    return args


def bert_base(folder: Path, smoke: bool) -> Path:
    """A sequence classifier of bert-base's shape with random weights (tiny in smoke runs), saved with
    the packaged uncased tokenizer, which has bert-base-uncased's vocabulary."""
    if smoke:
        return tiny_bert(folder)
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = load_tokenizer("packaged:all-MiniLM-L6-v2")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def matmul_peak_tflops() -> float:
    """Dense matmul TFLOP/s measured here: bf16 8192^3 on a GPU, fp32 512^3 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if GPU else (512, torch.float32)
    device = "cuda" if GPU else "cpu"
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    reps = 50 if GPU else 5
    if GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if GPU:
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def flops_per_token(model_dir: Path) -> Callable[[float], float]:
    """Training FLOPs per token as a function of the padded length T: ``6 N + 12 L T d`` (N weights
    outside the embeddings, L layers, d width)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    embedded = sum(p.numel() for p in model.base_model.embeddings.parameters())
    weights = sum(p.numel() for p in model.parameters()) - embedded
    return lambda padded_length: 6 * weights + 12 * config.num_hidden_layers * padded_length * config.hidden_size


def training_throughput(args: argparse.Namespace, model_dir: Path, storage: Path, peak: float) -> list[dict[str, Any]]:
    """Part 1: the four paths at both shapes (``--smoke``: the project's at ZeRO-0 only); one row per (shape, path)."""
    shape_args = argparse.Namespace(model=str(model_dir), max_len=64 if args.smoke else 512, reviews=args.train_reviews,
                                    batch=8 if args.smoke else 32, threads=1 if args.smoke else 8)
    rows = []
    for shape in ("fixed", "real"):
        cfg = bench_config(shape_args, shape, str(storage))
        data = prepare_data(cfg)
        for path, run in (("plain eager", lambda: plain_loop(cfg, data)),
                          ("plain compiled", lambda: plain_loop(cfg, data, "inductor" if GPU else "eager", warmup=10 if GPU else 2))):
            seconds, tokens, samples = run()
            rows.append({"shape": shape, "path": path, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
                         "padded_length": tokens / samples})
        length = rows[-2]["padded_length"]  # the eager loop's: the project trains the same batches
        for stage in (0,) if args.smoke else (0, 2):  # smoke: ZeRO-0 (ZeRO-2 trains in every CI smoke run)
            samples_per_s = project_path(with_zero_stage(cfg, stage, shape), data)
            rows.append({"shape": shape, "path": f"project ZeRO-{stage}", "samples_per_s": samples_per_s,
                         "tokens_per_s": samples_per_s * length, "padded_length": length})
    flops = flops_per_token(model_dir)
    for row in rows:
        row["mfu"] = row["tokens_per_s"] * flops(row["padded_length"]) / (peak * 1e12)
    return rows


def with_zero_stage(cfg: Config, stage: int, shape: str) -> Config:
    """``cfg`` at DeepSpeed ZeRO ``stage``, as a new run (an existing one would be resumed)."""
    run = cfg.run.model_copy(update={"name": f"gpu-suite-{shape}-zero{stage}-{dt.datetime.now():%H%M%S%f}"})
    return cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"zero_stage": stage}), "run": run})


def time_to_accuracy(args: argparse.Namespace, storage: Path, model_dir: Path) -> dict[str, Any]:
    """Part 2: the full MiniLM recipe through the real job (in smoke runs, the tiny ``model_dir``)."""
    overrides = [*([*SMOKE, f"model.name_or_path={model_dir}"] if args.smoke else []), "tracking.mode=disabled",
                 f"run.storage_path={storage}", f"run.name=gpu-suite-tta-{dt.datetime.now():%H%M%S}"]
    return run_job(load_config(str(ROOT / "configs" / "minilm-full.yaml"), overrides), "minilm-full.yaml")


def inference(args: argparse.Namespace, checkpoint: str) -> list[dict[str, Any]]:
    """Part 3a: in-process reviews/s and accuracy at 128 and 512 tokens (bf16 on a GPU)."""
    texts, labels = labelled_reviews(args.requests)
    rows = []
    for length in ((64,) if args.smoke else (128, 512)):
        predictor = at_length(Predictor.load(checkpoint, device=DEVICE, dtype=DTYPE, long_reviews="truncate"), length)
        rows.append({"length": length, **measure(predictor, texts, labels, batch_size=64)})
        predictor.close()
    return rows


def serving(args: argparse.Namespace, checkpoint: str) -> list[dict[str, Any]]:
    """Part 3b: one Serve replica (the GPU) over HTTP against the same checkpoint in-process."""
    reviews = load_reviews(args.requests)
    predictor = Predictor.load(checkpoint, device=DEVICE, dtype=DTYPE)
    in_process(predictor, reviews[:64])  # warm-up
    local = in_process(predictor, reviews)
    predictor.close()
    concurrency = 4 if args.smoke else 64
    url = deploy(Path(checkpoint), num_gpus=1 if GPU else 0)
    try:
        rows = [{"requests": f"{k} text{'s' if k > 1 else ''}", "concurrency": c,
                 **asyncio.run(http_load(url, reviews, c, texts_per_request=k)),
                 "in_process_reviews_per_s": local}
                for k, c in ((64, 4 if args.smoke else 8), (1, concurrency))]
    finally:
        serve.shutdown()
    for row in rows:
        row["ratio"] = row["reviews_per_s"] / local
    return rows


def summary_table(result: dict[str, Any]) -> list[str]:
    """The figures that have targets, one line each."""
    train = {(r["shape"], r["path"]): r for r in result["training"]}
    eager, zero0 = train[("fixed", "plain eager")], train[("fixed", "project ZeRO-0")]
    lines = [f"{r['shape']:>5} | {r['path']:<14} | {r['samples_per_s']:8.1f} samples/s | {r['tokens_per_s']:9.0f} tokens/s | "
             f"MFU {r['mfu']:.1%}" for r in result["training"]]
    tta = result["accuracy"]
    lines.append(f"MiniLM full IMDB: test accuracy {tta['test_accuracy']:.4f} after {tta['train_s']:.1f} s of training")
    lines += [f"in-process {r['length']} tokens: {r['reviews_per_s']:.1f} reviews/s, accuracy {r['accuracy']:.4f}"
              for r in result["inference"]]
    lines += [f"endpoint, {r['requests']} at concurrency {r['concurrency']}: {r['reviews_per_s']:.1f} reviews/s, "
              f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, HTTP / in-process {r['ratio']:.2f}" for r in result["serving"]]
    real_vs_fixed = train[("real", "project ZeRO-0")]["samples_per_s"] / zero0["samples_per_s"]
    lines.append(f"real lengths / fixed length (project ZeRO-0): {real_vs_fixed:.2f}x reviews/s")
    lines.append(f"project ZeRO-0 / plain eager at fixed length: {zero0['samples_per_s'] / eager['samples_per_s']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three parts, write the JSON, print the table last."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"device": device_name(), "date": dt.date.today().isoformat(), "commit": args.commit or commit(),
                              "command": " ".join([Path(sys.executable).name, "-m", "bench.gpu_suite", *(argv or sys.argv[1:])]),
                              "torch": torch.__version__}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        model_dir = bert_base(Path(tmp) / "bert-base", args.smoke)
        result["matmul_peak_tflops"] = peak = matmul_peak_tflops()
        init_ray(num_cpus=2 if args.smoke else None)
        try:
            result["training"] = training_throughput(args, model_dir, Path(tmp) / "runs", peak)
            result["accuracy"] = time_to_accuracy(args, Path(tmp) / "runs", model_dir)
            result["inference"] = inference(args, result["accuracy"]["checkpoint"])
            result["serving"] = serving(args, result["accuracy"]["checkpoint"])
        finally:
            ray.shutdown()
    result["seconds"] = time.perf_counter() - started
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['device']}, {result['date']}, commit {result['commit']}, torch {result['torch']}, "
          f"matmul peak {peak:.1f} TFLOP/s, {result['seconds']:.0f} s; {out / 'gpu_suite.json'}")
    print("\n".join(summary_table(result)))
    return result


if __name__ == "__main__":
    main()
