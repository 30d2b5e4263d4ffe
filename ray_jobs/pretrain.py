"""Entry point: within-task masked-language-model pretraining (ITPT) with Ray Train + DeepSpeed.

    python -m ray_jobs.pretrain --config configs/itpt-minilm.yaml [section.key=value ...]
    ray job submit --working-dir . -- python -m ray_jobs.pretrain --config configs/itpt-minilm.yaml

Continues the masked-LM training of ``model.name_or_path`` on in-domain text (``pretrain.splits``:
IMDB's unlabelled reviews and the training reviews, never the test split), as Sun et al. 2019 do
before fine-tuning. Same config, storage, worker group, DeepSpeed engine, per-epoch checkpoints,
resume after a failure, W&B and progress lines as ``ray_jobs.train``; checkpoints rank by the
held-out masked-LM loss (``val_loss``). The output is the best epoch's ``model/`` folder, a plain
Hugging Face masked-LM folder: pass it as ``model.name_or_path`` to fine-tune from it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from transformers import AutoModelForMaskedLM

from ray_jobs.launcher import build_trainer, check_resources, check_storage, check_storage_from_every_node
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import Tracker, start_tracking
from ray_jobs.worker import (
    ProgressWindow,
    TrainState,
    build_optimizer,
    build_scheduler,
    check_room_to_go_on,
    gather_from_ranks,
    log_rank0,
    optimizer_steps,
    report_epoch,
    resolve_precision,
    restore,
    start_engine,
    use_the_prebuilt_deepspeed_op,
    worker_device,
)
from sentiment import layout, storage
from sentiment.batching import eval_batches, train_batches
from sentiment.cli import TrainingCommand, parse_command
from sentiment.config import Config, ConfigError, config_from_dict, load_config, output_name
from sentiment.data import DataError
from sentiment.layout import MODEL_DIR, PRETRAIN_SUMMARY_FILE, STATE_FILE, epoch_dir_name
from sentiment.model import check_against_model, load_tokenizer, resolve_model_path
from sentiment.pretraining import MaskedPositionsMLM, MaskingCollator, Windows, pretraining_texts, to_windows

VALIDATION_SEED = 1234  # the same masks every epoch: validation losses compare across epochs


def prepare_windows(cfg: Config) -> dict[str, Windows]:
    """Read, sample, hold out and cut the texts into windows, once, on the driver.

    Raises:
        DataError: a split is missing or too small.
    """
    t0 = time.perf_counter()
    train, validation = pretraining_texts(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    windows = {"train": to_windows(tokenizer, train, cfg.data.max_seq_length),
               "validation": to_windows(tokenizer, validation, cfg.data.max_seq_length)}
    print(f"data: {len(train)} texts ({len(windows['train'])} windows of <= {cfg.data.max_seq_length} tokens) to "
          f"train on, {len(validation)} held out, from {'+'.join(cfg.pretrain.splits)} in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return windows


def build_mlm_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """``model.name_or_path`` with its masked-LM head (a fresh head if the folder has none), the head
    computed at masked positions only (``MaskedPositionsMLM``)."""
    model = AutoModelForMaskedLM.from_pretrained(resolve_model_path(cfg.model.name_or_path)).to(device)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return MaskedPositionsMLM(model)


def mlm_epoch(engine: Any, windows: Windows, cfg: Config, state: TrainState, rank: int, world: int,
              total_steps: int, tokenizer: Any, tracker: Tracker) -> float:
    """One epoch of masked-LM steps over this rank's batches; the mean loss over all ranks.

    Masks (their own generator) and dropout are seeded by (seed, epoch, rank): a resumed epoch
    masks and drops alike.
    """
    device = engine.device
    seed = cfg.train.seed * 10_000 + state.epoch * world + rank
    torch.manual_seed(seed)
    collate = MaskingCollator(tokenizer, cfg, seed)
    batches = train_batches(windows.lengths, cfg.train.batch_size, seed=cfg.data.seed, epoch=state.epoch, rank=rank,
                            world_size=world, group_by_length=cfg.data.length_grouping, multiple_of=cfg.train.grad_accum_steps)
    engine.train()
    epoch_loss = torch.zeros((), device=device)

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        return engine(**{k: v.to(device) for k, v in collate(windows, rows).items()}).loss

    progress = ProgressWindow(cfg, state, rank, world, total_steps, tracker, prefix="pretrain")
    for step in optimizer_steps(engine, batches, loss_of, cfg.train.grad_accum_steps):
        epoch_loss += step.loss
        progress.after_step(engine, step)
    dist.all_reduce(epoch_loss)
    return epoch_loss.item() / (max(1, len(batches)) * world)


@torch.inference_mode()
def mlm_validation_loss(model: torch.nn.Module, windows: Windows, cfg: Config, rank: int, world: int,
                        tokenizer: Any) -> float:
    """Masked-LM loss over every held-out window (fixed masks), per masked token, all ranks together."""
    model.eval()
    collate = MaskingCollator(tokenizer, cfg, VALIDATION_SEED + rank)
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, masked tokens
    for rows in eval_batches(windows.lengths, cfg.train.batch_size * 2, rank=rank, world_size=world):
        batch = {k: v.to(device) for k, v in collate(windows, rows).items()}
        masked = (batch["labels"] >= 0).sum()
        if masked:
            total += torch.stack([model(**batch).loss.double() * masked, masked.double()])
    dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    """Masked-LM training: every epoch validate, checkpoint (DeepSpeed state + HF folder) and report.

    Args:
        config: ``{"cfg": <Config as dict>, "data": <ObjectRef or dict of Windows>, "run_name": str,
            "wandb_dir": str}``.
    """
    use_the_prebuilt_deepspeed_op()

    cfg = config_from_dict(config["cfg"], "train_loop_config")
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = worker_device(cfg)
    cfg = resolve_precision(cfg, device, rank, world)  # train.precision=auto, as fine-tuning decides it
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    data = config["data"]
    windows: dict[str, Windows] = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = build_mlm_model(cfg, device)
    steps_per_epoch = len(windows["train"]) // (cfg.train.batch_size * world) // cfg.train.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{len(windows['train'])} windows make no full step of batch {cfg.train.batch_size} "
                         f"x {world} workers; lower train.batch_size")
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = build_optimizer(model.mlm, cfg, device)
    engine = start_engine(model, optimizer, build_scheduler(optimizer, cfg, total_steps), cfg, world)
    state = restore(engine, cfg, rank)
    check_room_to_go_on(cfg, state)
    state.worker_nodes = gather_from_ranks(ray.get_runtime_context().get_node_id(), world)
    state.starts += 1
    tracker = start_tracking(cfg, config["run_name"], config["wandb_dir"], job_type="pretrain") if rank == 0 else Tracker()
    run_dir = tctx.get_storage().experiment_fs_path
    log_rank0(rank, f"masked-LM training on {len(windows['train'])} windows with {world} worker(s): {steps_per_epoch} "
               f"steps/epoch, {cfg.train.epochs} epochs, {cfg.pretrain.mlm_probability:.0%} "
               f"{'whole-word ' if cfg.pretrain.whole_word_mask else ''}masking")
    while state.epoch < cfg.train.epochs:
        t0 = time.perf_counter()
        train_loss = mlm_epoch(engine, windows["train"], cfg, state, rank, world, total_steps, tokenizer, tracker)
        val_loss = mlm_validation_loss(engine.module, windows["validation"], cfg, rank, world, tokenizer)
        state.epoch += 1
        state.update(val_loss, "min", storage.join(run_dir, epoch_dir_name(state.epoch)))
        scalars = {"train_loss": train_loss, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)),
                   "epoch": state.epoch, "step": state.global_step, "epoch_time_s": time.perf_counter() - t0}
        state.history.append(scalars)
        log_rank0(rank, f"epoch {state.epoch}/{cfg.train.epochs}: train_loss {train_loss:.4f} | val_loss {val_loss:.4f} | "
                   f"val_perplexity {scalars['val_perplexity']:.2f}")
        tracker.log({"val/mlm_loss": val_loss, "val/perplexity": scalars["val_perplexity"], "epoch": state.epoch,
                     "pretrain/epoch_loss": train_loss}, step=state.global_step)
        report_epoch(engine, tokenizer, cfg, state, scalars, scalars, rank, world)
    tracker.finish()


def pretrain_config(cfg: Config) -> Config:
    """The config as pretraining runs it: checkpoints ranked by the held-out masked-LM loss."""
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"metric": "val_loss", "mode": "min"})})


def launch(cfg: Config, windows: dict[str, Windows] | None = None) -> dict[str, Any]:
    """Run the pretraining job on the current Ray; returns the run folder and the best model folder."""
    cfg = pretrain_config(cfg)
    windows = windows if windows is not None else prepare_windows(cfg)
    run_name = output_name(cfg, "pretrain")
    storage_path = layout.storage_root(cfg)
    trainer = build_trainer(cfg, ray.put(windows), run_name, storage_path, loop=pretrain_loop_per_worker)
    result = trainer.fit()
    fs, root = storage.filesystem(storage_path)
    run_dir = storage.join(root, run_name)
    best = result.metrics["best_checkpoint"]
    summary = {"run_dir": run_dir, "best_checkpoint": best, "model": storage.join(best, MODEL_DIR),
               "best_val_loss": result.metrics["best_value"],
               "history": storage.read_json(fs, storage.join(result.checkpoint.path, STATE_FILE))["history"]}
    storage.write_json(fs, storage.join(run_dir, PRETRAIN_SUMMARY_FILE), summary)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: validate, read the texts, start or join Ray, pretrain, print the model folder to fine-tune from."""
    args = parse_command(TrainingCommand, argv, prog="python -m ray_jobs.pretrain", description=__doc__.split("\n")[0])
    cfg = pretrain_config(load_config(args.config, args.overrides))
    check_against_model(cfg)
    check_storage(cfg)
    windows = prepare_windows(cfg)
    init_ray()
    check_resources(cfg)
    check_storage_from_every_node(cfg)
    summary = launch(cfg, windows)
    root = layout.storage_root(cfg)
    model = storage.location_of(root, summary["model"])
    print(f"\nbest masked-LM validation loss {summary['best_val_loss']:.4f}")
    print(f"pretrained model: {model}\nfine-tune from it: python -m ray_jobs.train --config configs/quickstart.yaml "
          f"model.name_or_path={model}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
