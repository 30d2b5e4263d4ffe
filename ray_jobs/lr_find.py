"""Learning-rate range test through Ray Train + DeepSpeed (ktrain's ``lr_find`` / ``lr_plot``).

    python -m ray_jobs.lr_find --config configs/quickstart.yaml [--min-lr 1e-7] [--max-lr 1] [--steps 100] [section.key=value ...]
    ray job submit --working-dir . -- python -m ray_jobs.lr_find --config configs/quickstart.yaml

A short run of the real training setup (same model, frozen layers, optimizer, DeepSpeed config,
workers and batches) with the rate growing exponentially each optimizer step, stopped when the
smoothed loss diverges (``sentiment.lr_range``). The loss is the one the config trains with
(with ``train.teacher``, the distillation loss against the teacher's logits). It writes
``lr_find.csv``, ``lr_find.png`` and ``lr_find.json`` (the suggestion and its rule) under
``<storage>/<run>/lr_find/``, logs the curve and the plot to W&B, and prints the suggested rate
with the command to train at it with ``train.schedule=one_cycle``. Nothing is checkpointed: the weights it leaves behind are spent.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray.train
import torch
import torch.distributed as dist
from pydantic import Field

from ray_jobs.launcher import build_trainer, check_resources, check_storage, check_storage_from_every_node, prepare_data, wandb_dir
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import start_tracking
from ray_jobs.worker import (
    build_optimizer,
    build_train_model,
    class_weight_tensor,
    log_rank0,
    optimizer_steps,
    start_engine,
    training_loss,
    use_the_prebuilt_deepspeed_op,
    worker_setup,
)
from sentiment import layout, storage
from sentiment.batching import iterate, make_collator, train_batches
from sentiment.cli import TrainingCommand, parse_command
from sentiment.config import Config, ConfigError, load_config, output_name
from sentiment.layout import LR_CURVE_FILE
from sentiment.lr_range import LossTracker, LrRange, Suggestion, plot, suggest
from sentiment.model import check_against_model, eval_frozen_bottom

OUT_DIR = "lr_find"


def _micro_batches(split: Any, cfg: Config, rank: int, world: int, collate: Any) -> Any:
    """This rank's padded training micro-batches, epoch after epoch, for as long as the test asks."""
    epoch = 0
    while True:
        batches = train_batches(
            split.lengths, cfg.train.batch_size, seed=cfg.data.seed, epoch=epoch, rank=rank, world_size=world,
            group_by_length=cfg.data.length_grouping, multiple_of=cfg.train.grad_accum_steps,
        )
        yield from iterate(split.inputs, split.labels, batches, collate)
        epoch += 1


def lr_find_loop_per_worker(config: dict[str, Any]) -> None:
    """The range test on one worker; every rank reports the same all-reduced curve.

    Args:
        config: the training loop's config plus ``"lr_range"`` (an :class:`LrRange` as a dict).
            Rank 0 writes the curve to ``LR_CURVE_FILE`` in the run folder.
    """
    use_the_prebuilt_deepspeed_op()

    rng = LrRange(**config["lr_range"])
    cfg, rank, world, device, tokenizer, splits = worker_setup(config)
    split = splits["train"]
    tctx = ray.train.get_context()
    model = build_train_model(cfg, device)
    start = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": rng.min_lr})})
    optimizer = build_optimizer(model, start, device)
    engine = start_engine(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rng.factor), cfg, world)
    collate, weights = make_collator(tokenizer, cfg.data.pad_to_multiple_of), class_weight_tensor(cfg, split.labels, device)
    tracker, lrs, losses, stop = LossTracker(rng), [], [], "reached --max-lr"
    engine.train()
    eval_frozen_bottom(engine.module, cfg.train.freeze_embeddings, cfg.train.freeze_layers)
    log_rank0(rank, f"lr range test: {rng.min_lr:.1e} -> {rng.max_lr:.1e} over {rng.steps} steps on {world} worker(s)")
    teacher = None if split.teacher_logits is None else torch.from_numpy(split.teacher_logits)

    def loss_of(micro_batch: tuple[np.ndarray, dict[str, torch.Tensor]]) -> torch.Tensor:
        idx, batch = micro_batch
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        return training_loss(engine(**batch).logits, labels, None if teacher is None else teacher[idx].to(device), cfg, weights)

    for step in optimizer_steps(engine, _micro_batches(split, cfg, rank, world, collate), loss_of, cfg.train.grad_accum_steps):
        dist.all_reduce(step.loss)  # every rank sees the same loss and stops at the same step
        lrs.append(step.lr)
        losses.append(step.loss.item() / (world * cfg.train.grad_accum_steps))
        diverged = tracker.update(losses[-1])
        if len(lrs) % cfg.train.log_every_steps == 0 or diverged:
            log_rank0(rank, f"step {len(lrs)}/{rng.steps} | lr {step.lr:.2e} | loss {losses[-1]:.4f} | smoothed {tracker.smoothed[-1]:.4f}")
        if diverged:
            stop = "the smoothed loss diverged"
            break
        if len(lrs) == rng.steps:
            break
    if rank == 0:
        fs, run_dir = tctx.get_storage().storage_filesystem, tctx.get_storage().experiment_fs_path
        curve = {"lrs": lrs, "losses": losses, "smoothed": tracker.smoothed, "stop": stop}
        storage.write_json(fs, storage.join(run_dir, LR_CURVE_FILE), curve)


def write_outputs(curve: pd.DataFrame, suggestion: Suggestion, rng: LrRange, stop: str, folder: Path) -> dict[str, Any]:
    """``lr_find.csv``, ``lr_find.png`` and ``lr_find.json`` into the local ``folder``; returns the JSON."""
    curve.to_csv(folder / "lr_find.csv", index=False)
    plot(list(curve["lr"]), list(curve["loss"]), suggestion, folder / "lr_find.png")
    found = {
        "suggested_lr": suggestion.lr, "rule": suggestion.rule, "min_loss_lr": suggestion.min_loss_lr,
        "min_loss_over_10": suggestion.min_loss_over_10, "steps_run": len(curve), "stopped_because": stop,
        "range": asdict(rng),
    }
    storage.write_local_json(folder / "lr_find.json", found)
    return found


def track(cfg: Config, run_name: str, storage_path: str, curve: pd.DataFrame, suggestion: Suggestion, png: Path) -> None:
    """The curve (one W&B step per optimizer step), the plot and the suggestion in a W&B run."""
    tracker = start_tracking(cfg, run_name, cfg.tracking.dir or wandb_dir(storage_path, run_name), job_type="lr_find")
    if not tracker.enabled:
        return
    import wandb

    for step, row in curve.iterrows():
        tracker.log({"lr_find/lr": row["lr"], "lr_find/loss": row["loss"], "lr_find/smoothed_loss": row["smoothed_loss"]}, step=int(step))
    tracker.log({"lr_find/plot": wandb.Image(str(png))})
    tracker.summary({"lr_find/suggested_lr": suggestion.lr, "lr_find/min_loss_lr": suggestion.min_loss_lr})
    tracker.finish()


def find_lr(cfg: Config, rng: LrRange, run_name: str, data: Any = None) -> dict[str, Any]:
    """Run the range test on the current Ray (``init_ray`` first); write, track and return ``lr_find.json``.

    Raises:
        ValueError: the run recorded too few finite losses to suggest a rate.
    """
    data = data if data is not None else {"train": prepare_data(cfg)["train"]}
    storage_path = layout.storage_root(cfg)
    build_trainer(
        cfg, ray.put(data), run_name, storage_path, loop=lr_find_loop_per_worker, loop_config={"lr_range": asdict(rng)},
    ).fit()
    fs, root = storage.filesystem(storage_path)
    m = storage.read_json(fs, storage.join(root, run_name, LR_CURVE_FILE))
    curve = pd.DataFrame({"step": range(1, len(m["lrs"]) + 1), "lr": m["lrs"], "loss": m["losses"], "smoothed_loss": m["smoothed"]})
    suggestion = suggest(m["lrs"], m["losses"])
    location = storage.child(storage_path, run_name, OUT_DIR)
    with tempfile.TemporaryDirectory(prefix="lr-find-") as tmp:
        found = write_outputs(curve, suggestion, rng, m["stop"], Path(tmp))
        with storage.publish_dir(location) as folder:  # all three files or none
            shutil.copytree(tmp, folder, dirs_exist_ok=True)
        track(cfg, run_name, storage_path, curve, suggestion, Path(tmp) / "lr_find.png")
    return found | {"location": location}


class LrFindCommand(TrainingCommand):
    """``ray_jobs.lr_find``'s options: the training config, and the range the rate sweeps."""

    min_lr: float = Field(LrRange.min_lr, description="First rate.")
    max_lr: float = Field(LrRange.max_lr, description="Last rate.")
    steps: int = Field(LrRange.steps, description="Optimizer steps from the first rate to the last.")
    name: str | None = Field(None, description="The output folder: the same as run.name=NAME (default lr-find-<timestamp>).")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: validate, prepare the training data, start or join Ray, run the test, print the suggestion."""
    args = parse_command(LrFindCommand, argv, prog="python -m ray_jobs.lr_find", description=__doc__.split("\n")[0])
    rng = LrRange(min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    cfg = load_config(args.config, [*args.overrides, *([f"run.name={args.name}"] if args.name else [])])
    check_against_model(cfg)
    check_storage(cfg)
    data = {"train": prepare_data(cfg)["train"]}
    init_ray()
    check_resources(cfg)
    check_storage_from_every_node(cfg)
    t0 = time.perf_counter()
    found = find_lr(cfg, rng, output_name(cfg, "lr-find"), data)
    print(f"\nlr range test: {found['steps_run']} steps in {time.perf_counter() - t0:.0f}s, stopped: {found['stopped_because']}")
    print(f"suggested lr: {found['suggested_lr']:.2e} ({found['rule']}); min loss / 10: {found['min_loss_over_10']:.2e}")
    print(f"plot: {storage.child(found['location'], 'lr_find.png')}")
    config = f"--config {args.config} " if args.config else ""
    print(f"train at it: python -m ray_jobs.train {config}train.lr={found['suggested_lr']:.2e} train.schedule=one_cycle")
    return found


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
