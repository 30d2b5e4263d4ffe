"""Training throughput: a plain PyTorch loop against the project's Ray Train + DeepSpeed path.

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.train_throughput [--smoke]

Both paths train the same model on the same reviews with the same global batches (the project's
length-grouped batch plan), the same AdamW, schedule and gradient clipping, one epoch each, in
one run on this machine. Shapes: every batch padded to a fixed length, and real review lengths
with dynamic padding. Printed per shape: samples/s and tokens/s of each path and their ratio;
the last line is the ratio project / plain over all shapes. On GPU the model is bf16 (autocast);
on CPU fp32. CPU figures say little about GPU ones.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from typing import Any

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split
import ray
import torch

from ray_jobs.local_ray import init_ray
from ray_jobs.train import launch, prepare_data
from ray_jobs.train_loop import build_optimizer, build_scheduler
from sentiment.batching import iterate, make_collator, train_batches
from sentiment.config import Config, load_config
from sentiment.data import SpecialTokens, model_inputs
from sentiment.model import build_model, load_tokenizer


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


def main(argv: list[str] | None = None) -> None:
    """Run both paths for each shape and print the table and the ratio line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--reviews", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both paths")
    parser.add_argument("--storage", default=None, help="run folders (default: a new temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="CI-sized: 64 reviews")
    args = parser.parse_args(argv)
    if args.smoke:
        args.reviews, args.batch = 64, 8
    args.storage = args.storage or tempfile.mkdtemp(prefix="bench-train-")
    torch.set_num_threads(args.threads)
    init_ray(num_cpus=args.threads)
    ratios = []
    print("| shape | plain samples/s | plain tokens/s | project samples/s | project / plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for shape in ("fixed", "real"):
        cfg = bench_config(args, shape, args.storage)
        data = prepare_data(cfg)
        seconds, tokens, samples = plain_loop(cfg, data)
        plain = samples / seconds
        project = project_path(cfg, data)
        ratios.append(project / plain)
        print(f"| {shape} {cfg.data.max_seq_length} | {plain:.1f} | {tokens / seconds:.0f} | {project:.1f} "
              f"| {project / plain:.2f} |", flush=True)
    ray.shutdown()
    print(f"ratio project/plain (geometric mean over shapes): {math.prod(ratios) ** (1 / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
