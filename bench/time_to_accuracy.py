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
from pathlib import Path
from typing import Any

import ray

from bench.common import ROOT, SMOKE, run_job
from sentiment.config import load_config


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
