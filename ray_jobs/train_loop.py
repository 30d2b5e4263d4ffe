"""The fine-tuning recipe: ``train_loop_per_worker``, what each Ray Train worker of a training job
runs on the worker runtime (``ray_jobs.worker``): epochs of training, validation, reports and
checkpoints, then the best epoch's test.

Every rank plans the same global batch order and takes its own disjoint slice (see
``sentiment.batching``). Validation and test logits are gathered from all ranks, so every rank
computes the same metrics over the whole split and takes the same early-stopping decision.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification

from ray_jobs.tracking import Tracker, start_tracking
from ray_jobs.worker import (
    ProgressWindow,
    Split,
    TrainState,
    WorkerContext,
    build_optimizer,
    build_scheduler,
    build_train_model,
    check_room_to_go_on,
    class_weight_tensor,
    gather_from_ranks,
    log_rank0,
    optimizer_steps,
    report_epoch,
    restore,
    start_engine,
    training_loss,
    use_the_prebuilt_deepspeed_op,
    worker_setup,
)
from sentiment import model_folder, storage
from sentiment.batching import eval_batches, iterate, make_collator, train_batches
from sentiment.config import Config
from sentiment.data import mean_by_owner
from sentiment.layout import MODEL_DIR, epoch_dir_name
from sentiment.metrics import compute_metrics, scalar_metrics
from sentiment.model import eval_frozen_bottom
from sentiment.precision import autocast_dtype, inference_dtype


def _autocast(cfg: Config, device: torch.device) -> torch.autocast:
    dtype = autocast_dtype(cfg.train.precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, cfg: Config, collate: Any, device: torch.device, prefix: str) -> dict[str, Any]:
    """Metrics over the whole split: each rank scores its share, logits are gathered to all ranks. A
    multi-label model decides with ``model.thresholds``, or with thresholds tuned on this split."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model.eval()
    idx_all, logits_all = [], []
    batches = eval_batches(split.lengths, cfg.train.batch_size * 2, rank=rank, world_size=world)
    for idx, batch in iterate(split.inputs, None, batches, collate):
        with _autocast(cfg, device):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        idx_all.extend(idx)
        logits_all.append(logits.float().cpu().numpy())
    local = (idx_all, np.concatenate(logits_all) if logits_all else np.zeros((0, cfg.model.num_labels)))
    gathered = gather_from_ranks(local, world)
    order = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in gathered])
    logits = np.concatenate([lg for _, lg in gathered])[np.argsort(order)]
    if split.owners is not None:
        logits = mean_by_owner(logits, split.owners, len(split.labels))
    return compute_metrics(logits, split.labels, cfg.model.label_names, prefix=prefix, thresholds=cfg.model.fixed_thresholds)


def train_epoch(engine: Any, split: Split, cfg: Config, state: TrainState, ctx: WorkerContext, tracker: Tracker) -> tuple[float, float]:
    """One epoch over this rank's batches; returns its mean training loss and accuracy over all ranks
    (accuracy of the training-mode forward passes, dropout on, as they happened).

    Progress lines and W&B's ``train/loss`` show rank 0's micro-batches since the last line.
    """
    rank, world, device = ctx.rank, ctx.world, ctx.device
    torch.manual_seed(cfg.train.seed * 10_000 + state.epoch * world + rank)  # dropout, reproducible on resume
    batches = train_batches(
        split.lengths, cfg.train.batch_size, seed=cfg.data.seed, epoch=state.epoch, rank=rank,
        world_size=world, group_by_length=cfg.data.length_grouping, multiple_of=cfg.train.grad_accum_steps,
    )
    engine.train()
    eval_frozen_bottom(engine.module, cfg.train.freeze_embeddings, cfg.train.freeze_layers)
    epoch_loss = torch.zeros((), device=device)
    epoch_correct = torch.zeros((), device=device)
    teacher = None if split.teacher_logits is None else torch.from_numpy(split.teacher_logits)

    def loss_of(micro_batch: tuple[np.ndarray, dict[str, torch.Tensor]]) -> torch.Tensor:
        idx, batch = micro_batch
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = engine(**batch).logits
        if cfg.model.multi_label:  # every label right, deciding at probability 0.5
            epoch_correct.add_(((logits.detach() > 0) == labels.bool()).all(dim=-1).sum())
        else:
            epoch_correct.add_((logits.detach().argmax(dim=-1) == labels).sum())
        return training_loss(logits, labels, None if teacher is None else teacher[idx].to(device), cfg, ctx.class_weights)

    progress = ProgressWindow(cfg, state, rank, world, ctx.total_steps, tracker, prefix="train")
    micro_per_step = cfg.train.grad_accum_steps / max(1, len(batches))
    micro_batches = iterate(split.inputs, split.labels, batches, ctx.collate)
    for step in optimizer_steps(engine, micro_batches, loss_of, cfg.train.grad_accum_steps):
        epoch_loss += step.loss
        epoch_done = (state.global_step + 1 - progress.start_step) * micro_per_step
        progress.after_step(engine, step, {"train/epoch": state.epoch + epoch_done})
    totals = torch.stack([epoch_loss, epoch_correct.float()])
    dist.all_reduce(totals)  # every rank ran len(batches) full micro-batches
    count = max(1, len(batches)) * world
    return totals[0].item() / count, totals[1].item() / (count * cfg.train.batch_size)


def test_best_model(cfg: Config, splits: dict[str, Split], state: TrainState, ctx: WorkerContext, tracker: Tracker) -> dict[str, Any]:
    """Load the best epoch's plain HF model (no DeepSpeed) and evaluate it on the test split."""
    fs = ray.train.get_context().get_storage().storage_filesystem
    model_dir = storage.join(state.best_checkpoint, MODEL_DIR)
    with tempfile.TemporaryDirectory(prefix="best-model-") as tmp:
        local = model_dir
        if not isinstance(fs, pafs.LocalFileSystem):  # a remote run: copied for this test, then removed
            local = tmp
            storage.download(fs, model_dir, tmp)
        dtype = inference_dtype(cfg.train.precision, ctx.device)  # scored as Predictor will predict on this device
        model = AutoModelForSequenceClassification.from_pretrained(local, use_safetensors=True, dtype=dtype).to(ctx.device)
        tested = model_folder.read_config(local) if cfg.model.multi_label else cfg  # the thresholds it was saved with
        metrics = evaluate(model, splits["test"], tested, ctx.collate, ctx.device, prefix="test_")
        metrics["test_epoch"], metrics["test_checkpoint"] = state.best_epoch, state.best_checkpoint
        if ctx.rank == 0:
            model_folder.write_test_metrics(fs, ctx.run_dir, metrics)  # and the tested folder's model card
            tracker.summary(scalar_metrics(metrics))
            tracker.log({f"test/{k.removeprefix('test_')}": v for k, v in scalar_metrics(metrics).items()}, step=state.global_step)
            tracker.log_model(local, name=f"model-{ctx.run_name}", aliases=["best", f"epoch-{state.best_epoch}"],
                              metadata=scalar_metrics(metrics))
    return metrics


def optimizer_steps_per_epoch(examples: int, cfg: Config, world: int) -> int:
    """Optimizer steps in an epoch of ``examples`` over ``world`` ranks (``train_batches`` plans full
    global batches, cropped to a multiple of the accumulation steps).

    Raises:
        ValueError: not one full step.
    """
    steps = examples // (cfg.train.batch_size * world) // cfg.train.grad_accum_steps
    if steps == 0:
        raise ValueError(
            f"{examples} training examples make no full step of batch {cfg.train.batch_size} "
            f"x accumulation {cfg.train.grad_accum_steps} x {world} workers; lower train.batch_size"
        )
    return steps


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train, validate and checkpoint every epoch, then test the best epoch's model (if a test split came).

    Args:
        config: ``{"cfg": <Config as dict>, "data": <ObjectRef or dict of EncodedSplit>,
            "run_name": str, "wandb_dir": str}``.
    """
    use_the_prebuilt_deepspeed_op()

    cfg, rank, world, device, tokenizer, splits = worker_setup(config)
    tctx = ray.train.get_context()
    model = build_train_model(cfg, device)
    steps_per_epoch = optimizer_steps_per_epoch(len(splits["train"]), cfg, world)
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = build_optimizer(model, cfg, device)
    engine = start_engine(model, optimizer, build_scheduler(optimizer, cfg, total_steps), cfg, world)
    state = restore(engine, cfg, rank)
    check_room_to_go_on(cfg, state)
    state.worker_nodes = gather_from_ranks(ray.get_runtime_context().get_node_id(), world)
    state.starts += 1
    run_name = config["run_name"]
    tracker = start_tracking(cfg, run_name, config["wandb_dir"]) if rank == 0 else Tracker()
    ctx = WorkerContext(
        rank=rank, world=world, device=device, total_steps=total_steps, run_name=run_name,
        collate=make_collator(tokenizer, cfg.data.pad_to_multiple_of),
        run_dir=tctx.get_storage().experiment_fs_path,
        class_weights=class_weight_tensor(cfg, splits["train"].labels, device),
    )
    log_rank0(rank, f"training {len(splits['train'])} reviews on {world} worker(s): {steps_per_epoch} steps/epoch, "
               f"{cfg.train.epochs} epochs, global batch {cfg.train.batch_size * cfg.train.grad_accum_steps * world}")
    patience, metric_key = cfg.train.early_stopping_patience, cfg.run.metric
    stop = patience is not None and state.bad_epochs >= patience
    while state.epoch < cfg.train.epochs and not stop:
        t0 = time.perf_counter()
        train_loss, train_accuracy = train_epoch(engine, splits["train"], cfg, state, ctx, tracker)
        train_time = time.perf_counter() - t0
        metrics = evaluate(engine.module, splits["validation"], cfg, ctx.collate, device, prefix="val_")
        state.epoch += 1
        value = metrics[metric_key]
        state.update(value, cfg.run.mode, storage.join(ctx.run_dir, epoch_dir_name(state.epoch)))
        stop = patience is not None and state.bad_epochs >= patience
        scalars = {**scalar_metrics(metrics), "train_loss": train_loss,
                   "train_accuracy": train_accuracy, "epoch": state.epoch,
                   "step": state.global_step, "epoch_time_s": time.perf_counter() - t0,
                   "train_samples_per_s": steps_per_epoch * cfg.train.grad_accum_steps * cfg.train.batch_size * world / train_time}
        state.history.append(scalars)
        log_rank0(rank, f"epoch {state.epoch}/{cfg.train.epochs}: train_loss {train_loss:.4f} | " +
             " | ".join(f"{k} {metrics[k]:.4f}" for k in ("val_loss", "val_accuracy", "val_f1", "val_micro_f1") if k in metrics) +
             (" | early stop" if stop else ""))
        validation = {f"val/{k.removeprefix('val_')}": v for k, v in scalar_metrics(metrics).items()}
        tracker.log(validation | {"epoch": state.epoch, "train/epoch_loss": train_loss, "train/epoch_accuracy": train_accuracy},
                    step=state.global_step)
        report_epoch(engine, tokenizer, cfg, state, metrics, scalars, rank, world)
    del engine, optimizer, model
    dist.barrier()  # rank 0 may still be uploading the last epoch's model folder
    if "test" in splits:  # a cross-validation fold has none
        test_best_model(cfg, splits, state, ctx, tracker)
    tracker.finish()
