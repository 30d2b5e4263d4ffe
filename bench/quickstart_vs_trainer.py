"""The quickstart job against Hugging Face ``Trainer`` on the same reviews, one run.

    python -m bench.quickstart_vs_trainer                  # configs/quickstart.yaml, $IMDB_DATA_DIR
    python -m bench.quickstart_vs_trainer --smoke          # CI-sized: tiny BERT, synthetic reviews

Both sides get the same model (the config's, seeded alike), the same training and test reviews
(the config's own splits and caps), the same max length, epochs, learning rate and global batch.
``Trainer`` otherwise keeps its defaults, as a first-time user would: head truncation, no warmup,
AdamW, linear decay, all cores to one process, fp32 (``--trainer-bf16`` gives it bf16 autocast
where the CPU runs bf16 natively, as the quickstart's ``precision: auto`` does: the strict peer).
The project runs its real path: a local Ray, ``ray_jobs.launcher.launch`` (Ray Train + DeepSpeed,
the config's workers), which tests the best epoch on the test split at the end (whole reviews in
windows of the max length when the config says ``data.long_reviews: chunks``, as the
quickstart's does; ``Trainer`` truncates, its default). Timed on both sides: training plus
scoring the test split (and, for the project, starting Ray); loading and tokenizing the data are
not. Printed last: the accuracy
difference in points and the time ratio, quickstart / Trainer.
"""

from __future__ import annotations

import ray_jobs  # noqa: F401  (before Ray: a Ray started here stays on loopback)

# isort: split

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from sentiment.config import Config, load_config
from sentiment.data import load_splits
from sentiment.precision import auto_precision

SMOKE = ["data.max_train_samples=64", "data.max_val_samples=32", "data.max_test_samples=32", "data.max_seq_length=32",
         "train.batch_size=8", "train.epochs=1", "train.log_every_steps=100"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--smoke", action="store_true", help="CI-sized: a tiny BERT on synthetic reviews")
    p.add_argument("--trainer-bf16", action="store_true",
                   help="give Trainer bf16=True too (not its default) where this CPU runs bf16 natively: the strict peer")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for both sides")
    return p.parse_args(argv)


def trainer_side(cfg: Config, splits: Any, workdir: Path, bf16: bool) -> dict[str, float]:
    """Fine-tune and test with ``transformers.Trainer`` (bf16 autocast if ``bf16``); accuracy and seconds."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    from sentiment.model import build_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)

    def encode(split: Any) -> Dataset:
        enc = tokenizer(list(split["text"]), truncation=True, max_length=cfg.data.max_seq_length)
        return Dataset.from_dict({**enc, "labels": list(split["label"])})

    train, test = encode(splits["train"]), encode(splits["test"])
    start = time.perf_counter()
    set_seed(cfg.train.seed)
    args = TrainingArguments(
        output_dir=str(workdir), num_train_epochs=cfg.train.epochs, learning_rate=cfg.train.lr, seed=cfg.train.seed,
        per_device_train_batch_size=cfg.train.batch_size * cfg.scaling.num_workers * cfg.train.grad_accum_steps,
        per_device_eval_batch_size=64, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, bf16=bf16,
    )
    trainer = Trainer(model=build_model(cfg.model), args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    logits = trainer.predict(test).predictions
    seconds = time.perf_counter() - start
    return {"accuracy": float((np.asarray(logits).argmax(1) == np.asarray(test["labels"])).mean()), "seconds": seconds}


def project_side(cfg: Config) -> dict[str, float]:
    """The quickstart's own path: start Ray, Ray Train + DeepSpeed, test the best epoch."""
    from ray_jobs.launcher import launch, prepare_data
    from ray_jobs.local_ray import init_ray

    data = prepare_data(cfg)
    start = time.perf_counter()
    init_ray()
    try:
        summary = launch(cfg, data)
    finally:
        ray.shutdown()
    return {"accuracy": summary["test_metrics"]["test_accuracy"], "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run Trainer, then the quickstart; print both and the ratios last."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        smoke: list[str] = []
        if args.smoke:
            from bench.common import synthetic_imdb, tiny_bert

            smoke = [f"model.name_or_path={tiny_bert(Path(tmp) / 'tiny')}", f"data.path={synthetic_imdb(Path(tmp) / 'data')}", *SMOKE]
        cfg = load_config(args.config, [*smoke, *args.overrides, "tracking.mode=disabled",
                                        f"run.storage_path={Path(tmp) / 'runs'}", "run.name=quickstart-bench"])
        splits = load_splits(cfg.data, cfg.model.label_names)
        native = auto_precision(torch.device("cpu"))
        precision = native if cfg.train.precision == "auto" else cfg.train.precision
        trainer_precision = "bf16" if args.trainer_bf16 and native == "bf16" else "fp32"
        trainer = trainer_side(cfg, splits, Path(tmp) / "trainer", bf16=trainer_precision == "bf16")
        project = project_side(cfg)
    n_train, n_test = len(splits["train"]), len(splits["test"])
    print(f"\n{n_train} training and {n_test} test reviews, {cfg.data.max_seq_length} tokens, {cfg.train.epochs} epoch(s), "
          f"lr {cfg.train.lr}, global batch {cfg.train.batch_size * cfg.scaling.num_workers}, {os.cpu_count()} cores")
    print(f"transformers.Trainer ({trainer_precision}): test accuracy {trainer['accuracy']:.4f}, "
          f"training + test {trainer['seconds']:.0f} s")
    print(f"quickstart (Ray Train + DeepSpeed, {cfg.scaling.num_workers} workers, {precision}): test accuracy {project['accuracy']:.4f}, "
          f"Ray start + training + test {project['seconds']:.0f} s")
    print(f"quickstart / Trainer: accuracy {100 * (project['accuracy'] - trainer['accuracy']):+.1f} points, "
          f"time {project['seconds'] / trainer['seconds']:.2f}x")
    return {"trainer": trainer, "quickstart": project}


if __name__ == "__main__":
    main()
