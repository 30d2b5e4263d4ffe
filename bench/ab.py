"""A/B of two training recipes at the same budget: test accuracy per review, paired 95% interval.

    IMDB_DATA_DIR=<imdb parquet folder> python -m bench.ab --name llrd --config configs/quickstart.yaml \\
        --common train.freeze_embeddings=false train.freeze_layers=0 --b train.layer_lr_decay=0.95
    python -m bench.ab --smoke --name smoke --common model.name_or_path=<tiny model> data.path=<data>   # CI-sized

Both arms train from the same config, seed and data on this machine's local Ray (one after the
other, never at once), with ``--common`` overrides for both and ``--a`` / ``--b`` overrides for
each. Each arm's best checkpoint then scores the same test reviews (the config's
``data.max_test_samples``, seeded; whole reviews when ``data.long_reviews=chunks``) with a
``Predictor``; the accuracy difference B - A is paired over those reviews, with a normal 95%
interval (mean of the per-review differences +- 1.96 standard errors); each arm's end-of-run macro
F1 and F1 per class stand beside its accuracy. Each arm's wall time
covers everything it runs: its data preparation (a teacher's logits included), training and
the end-of-run test. The last line is the difference in points with its interval.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on 127.0.0.1)

# isort: split

import argparse
import datetime as dt
import time

import numpy as np
import ray
import torch

from bench.common import commit, device_name, paired_difference
from ray_jobs.launcher import check_teacher, launch, prepare_data
from ray_jobs.local_ray import init_ray
from sentiment.config import Config, load_config
from sentiment.data import load_splits
from sentiment.model import check_against_model
from sentiment.predict import Predictor

SMOKE = ["data.max_seq_length=64", "data.max_train_samples=128", "data.max_val_samples=32",
         "data.max_test_samples=32", "train.batch_size=16", "train.freeze_layers=0", "train.freeze_embeddings=false",
         "tracking.mode=disabled"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="names the runs: ab-<name>-a and ab-<name>-b")
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--common", nargs="*", default=[], help="overrides for both arms")
    p.add_argument("--a", nargs="*", default=[], help="overrides of arm A (the baseline)")
    p.add_argument("--b", nargs="*", default=[], help="overrides of arm B")
    p.add_argument("--smoke", action="store_true", help="CI-sized: 128 training reviews, 32 test reviews")
    args = p.parse_args(argv)
    if args.smoke:
        args.common = [*SMOKE, *args.common]
    return args


def arm_config(args: argparse.Namespace, arm: str) -> Config:
    """The config of arm ``a`` or ``b``: the file, ``--common``, then the arm's own overrides."""
    own = args.a if arm == "a" else args.b
    cfg = load_config(args.config, [*args.common, *own, f"run.name=ab-{args.name}-{arm}-{dt.datetime.now():%Y%m%d-%H%M%S}"])
    check_against_model(cfg)
    check_teacher(cfg)
    return cfg


def run_arm(cfg: Config) -> tuple[dict, float]:
    """Train one arm; its ``result.json`` and the seconds it took, data preparation included."""
    start = time.perf_counter()
    summary = launch(cfg, prepare_data(cfg))
    return summary, time.perf_counter() - start


def correct_per_review(run_dir: str, cfg: Config) -> np.ndarray:
    """Whether the run's best model gets each of the config's test reviews right (as it predicts; a
    multi-label model: every label of the review right)."""
    test = load_splits(cfg.data, cfg.model.label_names, cfg.model.multi_label)["test"]
    predictor = Predictor.load(run_dir)
    logits = predictor.logits(predictor.encode(test["text"]), 32)
    predictor.close()
    labels = np.asarray(test["label"])
    if predictor.multi_label:
        return ((predictor.probabilities(logits) > predictor.thresholds[None, :]) == labels).all(axis=1)
    return logits.argmax(1) == labels


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    configs = {arm: arm_config(args, arm) for arm in ("a", "b")}
    init_ray()
    print(f"# A/B {args.name}: {device_name()}, torch {torch.__version__}, {dt.date.today()}, commit {commit()}")
    print(f"config {args.config}; both: {' '.join(args.common) or '-'}; A: {' '.join(args.a) or '-'}; B: {' '.join(args.b) or '-'}")
    rows, correct = [], {}
    for arm, cfg in configs.items():
        summary, seconds = run_arm(cfg)
        correct[arm] = correct_per_review(summary["run_dir"], cfg)
        test = summary["test_metrics"]
        per_class = ", ".join(f"{name} {test[f'test_f1_{name}']:.2f}" for name in cfg.model.label_names)
        rows.append(f"| {arm.upper()} | {summary['run_dir']} | {seconds:.0f} | {test['test_accuracy']:.4f} | "
                    f"{test['test_f1']:.4f} | {per_class} | {correct[arm].mean():.4f} | {len(correct[arm])} |")
    ray.shutdown()  # the workers' last log lines come before the table, not after it
    print("\n| arm | run | seconds | end-of-run test accuracy | macro F1 | F1 per class | accuracy (rescored) | test reviews |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    print("\n".join(rows))
    diff, lo, hi = paired_difference(correct["b"], correct["a"])
    print(f"B - A ({args.name}): {diff:+.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}] on {len(correct['a'])} test reviews")
    return {"difference": diff, "low": lo, "high": hi}


if __name__ == "__main__":
    main()
