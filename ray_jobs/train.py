"""Entry point: fine-tune a classifier with Ray Train + DeepSpeed.

    python -m ray_jobs.train --config configs/quickstart.yaml [section.key=value ...]
    ray job submit --working-dir . -- python -m ray_jobs.train --config configs/quickstart.yaml

Everything that can be checked is checked before Ray starts: the config, the model's limits and
the data (folder, columns, labels, empty texts). The driver tokenizes once and hands the token
ids to the workers through Ray's object store.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ray

from ray_jobs.export import ExportConfig
from ray_jobs.export import run as export_checkpoint
from ray_jobs.launcher import (
    check_resources,
    check_resume_from,
    check_storage,
    check_storage_from_every_node,
    check_teacher,
    launch,
    prepare_data,
)
from ray_jobs.local_ray import init_ray
from sentiment import layout, storage
from sentiment.cli import TrainingCommand, parse_command
from sentiment.config import Config, ConfigError, load_config
from sentiment.layout import MODEL_DIR
from sentiment.metrics import WEAK_F1, weak_classes
from sentiment.model import check_against_model
from sentiment.storage import StorageFullError


def outcome_line(cfg: Config, summary: dict[str, Any]) -> str:
    """The run's result in one line: test accuracy, or a cross-validation fold's validation metric."""
    test = summary["test_metrics"]
    if test is None:
        best = summary["best_metrics"]
        return (f"cross-validation fold {cfg.data.cv_fold + 1}/{cfg.data.cv_folds}: {cfg.run.metric} "
                f"{best[cfg.run.metric]:.4f} at epoch {best['epoch']} (the test split is not used)")
    if cfg.model.multi_label:
        return (f"test micro F1: {test['test_micro_f1']:.4f} on {test['test_count']} held-out texts (macro F1 "
                f"{test['test_f1']:.4f}, subset accuracy {test['test_accuracy']:.4f}, Hamming loss "
                f"{test['test_hamming_loss']:.4f}, best epoch {test['test_epoch']})")
    return (f"test accuracy: {test['test_accuracy']:.4f} on {test['test_count']} held-out reviews "
            f"(macro F1 {test['test_f1']:.4f}, best epoch {test['test_epoch']})")


def weak_classes_line(cfg: Config, summary: dict[str, Any]) -> str | None:
    """A warning naming each class the tested model serves badly (:func:`sentiment.metrics.weak_classes`), or None."""
    test = summary["test_metrics"]
    weak = weak_classes(test["test_confusion_matrix"], cfg.model.label_names) if test else {}
    if not weak:
        return None
    kind = "labels" if cfg.model.multi_label else "classes"
    return f"warning: weak {kind} on the test split (F1 under {WEAK_F1}): " + "; ".join(
        f"{name!r}: {why}" for name, why in weak.items())


def storage_full_line(err: Exception) -> str | None:
    """The one-line reason of a run stopped by a full storage (the workers'
    :class:`~sentiment.storage.StorageFullError`), or None for any other failure."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        text = str(failure)
        if isinstance(failure, StorageFullError) or "StorageFullError" in text:
            return next((line.strip().removeprefix("sentiment.storage.StorageFullError: ")
                         for line in reversed(text.splitlines()) if "storage full:" in line), text.strip())
    return None


def parse_args(argv: list[str] | None) -> TrainingCommand:
    """Command-line arguments as a :class:`~sentiment.cli.TrainingCommand`."""
    return parse_command(TrainingCommand, argv, prog="python -m ray_jobs.train", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: validate, prepare data, start or join Ray, train, print test accuracy and checkpoint."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_against_model(cfg)
    check_storage(cfg)
    check_resume_from(cfg)
    check_teacher(cfg)
    data = prepare_data(cfg)
    init_ray()
    check_resources(cfg)
    check_storage_from_every_node(cfg)
    t0 = time.perf_counter()
    summary = launch(cfg, data)
    print(f"\ntraining + test took {time.perf_counter() - t0:.0f}s")
    print(outcome_line(cfg, summary))
    if weak := weak_classes_line(cfg, summary):
        print(weak)
    root = layout.storage_root(cfg)
    best_model = storage.location_of(root, storage.join(summary["best_checkpoint"], MODEL_DIR))
    print(f"checkpoint: {best_model}")
    print(f"run folder: {storage.location_of(root, summary['run_dir'])}")
    if cfg.train.export:
        export_checkpoint(ExportConfig(checkpoint=best_model, int8="onnx-int8" in cfg.train.export))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, ValueError) as err:  # ExportError and CheckpointError are ValueErrors too
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ray.train.TrainingFailedError as err:
        reason = storage_full_line(err)
        if reason is None:
            raise
        print(f"error: {reason}", file=sys.stderr)  # the last complete checkpoint is intact
        sys.exit(1)
