"""Time to accuracy: fine-tune through the real job and report test accuracy and wall times.

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.time_to_accuracy                # full IMDB, configs/minilm-full.yaml (GPU)
    IMDB_DATA_DIR=... python -m bench.time_to_accuracy --config configs/quickstart.yaml  # CPU-sized
    python -m bench.time_to_accuracy --smoke model.name_or_path=<folder> data.path=<folder>  # CI-sized

The job is ``ray_jobs.train`` itself (Ray Train + DeepSpeed, the config's workers, checkpoint
every epoch, test on the best epoch). Reported: the device, the date, the commit, test accuracy,
training time (the epochs: forward, backward, step and the per-epoch validation), the whole job
(start of training to test metrics, checkpoints included) and the data preparation before it.
The target for the packaged MiniLM on one H100 is >= 93.5% test accuracy in <= 60 s of training.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split

import argparse
import datetime as dt
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import ray
import torch

from ray_jobs.local_ray import init_ray
from ray_jobs.train import launch, prepare_data
from sentiment.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["data.max_train_samples=64", "data.max_val_samples=16", "data.max_test_samples=32", "train.epochs=1",
         "train.batch_size=8", "data.max_seq_length=64", "scaling.use_gpu=false", "train.precision=fp32",
         "scaling.num_workers=1", "scaling.cpus_per_worker=1", "tracking.mode=disabled"]


def device_name() -> str:
    """The GPU's name, or the CPU core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU, {os.cpu_count()} cores, no GPU"


def commit() -> str:
    """The checked-out commit (short), with ``+dirty`` when the tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the job once and print the figures; the last line is the time-to-accuracy summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "minilm-full.yaml"))
    p.add_argument("--smoke", action="store_true", help="CI-sized: 64 reviews, one epoch, CPU")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [*(SMOKE if args.smoke else []), *args.overrides,
                                    f"run.name=tta-{dt.datetime.now():%Y%m%d-%H%M%S}"])
    try:
        row = run_job(cfg, Path(args.config).name)
    finally:
        ray.shutdown()
    train_s, job_s, prep_s = row["train_s"], row["job_s"], row["prep_s"]
    print("\n| device | date | commit | config | train reviews | epochs | test reviews | test accuracy | training s | job s "
          "| data prep s |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {row['device']} | {row['date']} | {row['commit']} | {row['config']} | {row['train_reviews']} | {row['epochs']} | "
          f"{row['test_reviews']} | {row['test_accuracy']:.4f} | {train_s:.1f} | {job_s:.1f} | {prep_s:.1f} |")
    print(f"time-to-accuracy: {row['test_accuracy']:.4f} test accuracy after {train_s:.1f} s of training "
          f"({job_s:.1f} s job) on {row['device']}")
    return row


if __name__ == "__main__":
    main()
