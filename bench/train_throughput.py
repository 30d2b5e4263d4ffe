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

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split
import ray
import torch

from bench.common import bench_config, plain_loop, project_path
from ray_jobs.launcher import prepare_data
from ray_jobs.local_ray import init_ray


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
