"""``train_loop_per_worker``: what every Ray Train worker runs (DeepSpeed engine, loop, reports).

Every rank plans the same global batch order and takes its own disjoint slice (see
``sentiment.batching``). Validation and test logits are gathered from all ranks, so every rank
computes the same metrics over the whole split and takes the same early-stopping decision.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification, get_scheduler

from ray_jobs.deepspeed_config import build_deepspeed_config
from ray_jobs.tracking import Tracker, start_tracking
from sentiment import layout, storage
from sentiment.batching import eval_batches, iterate, make_collator, train_batches
from sentiment.config import Config, config_from_dict
from sentiment.data import EncodedSplit, SpecialTokens, chunked_inputs, loss_class_weights, mean_by_owner, model_inputs
from sentiment.distillation import distillation_loss
from sentiment.layout import DEEPSPEED_DIR, MODEL_DIR, STATE_FILE, epoch_dir_name, save_model_dir
from sentiment.metrics import compute_metrics, scalar_metrics
from sentiment.model import build_model, eval_frozen_bottom, freeze_bottom, layer_lr_scales, load_tokenizer
from sentiment.precision import agreed_precision, auto_precision, autocast_dtype, inference_dtype

DS_TAG = "state"


@dataclass
class TrainState:
    """What a resumed run needs besides the DeepSpeed state."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: int = 0
    best_checkpoint: str | None = None  # storage path; may be in the run resumed from
    bad_epochs: int = 0  # epochs since the last improvement
    worker_nodes: list[str] = field(default_factory=list)  # Ray node id of each rank (last start)
    starts: int = 0  # times a worker group started this run: > 1 after a restart or a resume
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, value: float, mode: str, checkpoint: str) -> None:
        """Record the epoch just finished (``self.epoch``) with metric ``value`` under ``mode``.

        A tie with the best moves the best to this later epoch, as Ray's checkpoint retention
        ranks ties (a kept best must never be one Ray deleted); only a strict improvement resets
        the early-stopping count.
        """
        best = self.best_metric
        better = best is None or (value > best if mode == "max" else value < best)
        if better or value == best:
            self.best_metric, self.best_epoch, self.best_checkpoint = value, self.epoch, checkpoint
        self.bad_epochs = 0 if better else self.bad_epochs + 1


@dataclass(frozen=True)
class WorkerContext:
    """What this worker's loop needs besides the config, the model and the data."""

    rank: int
    world: int
    device: torch.device
    total_steps: int  # optimizer steps over the whole run
    run_name: str
    run_dir: str  # the run folder on the storage filesystem
    collate: Any  # token ids -> padded tensors
    class_weights: torch.Tensor | None  # loss weight per class


@dataclass
class Split:
    """A split ready for one worker: model inputs, labels and lengths; with ``owners`` the inputs
    are windows of whole reviews (``owners[i]``: window i's review), scored by their mean logits;
    ``teacher_logits`` (training with ``train.teacher``) are the teacher's, row by row."""

    inputs: list[list[int]]
    labels: np.ndarray
    owners: np.ndarray | None = None
    teacher_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.inputs]


def log_rank0(rank: int, msg: str) -> None:
    """Print ``msg`` on rank 0 only (one line per run in the job's log, not one per worker)."""
    if rank == 0:
        print(msg, flush=True)


def worker_device(cfg: Config) -> torch.device:
    """This worker's device: its GPU under ``scaling.use_gpu``, else the CPU."""
    return ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorm weights (fused kernel on CUDA), one param
    group per (lr factor, decay) pair under ``train.layer_lr_decay``."""
    scales = layer_lr_scales(model, cfg.train.layer_lr_decay)
    grouped: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = 0.0 if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else cfg.train.weight_decay
            grouped.setdefault((scales[name], wd), []).append(p)
    groups = [{"params": ps, "lr": cfg.train.lr * scale, "weight_decay": wd}
              for (scale, wd), ps in sorted(grouped.items(), key=lambda kv: kv[0], reverse=True)]
    return torch.optim.AdamW(
        groups, lr=cfg.train.lr, eps=cfg.train.adam_epsilon, fused=device.type == "cuda"
    )


def build_train_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The classifier as training runs it: frozen bottom and gradient checkpointing as configured."""
    model = build_model(cfg.model).to(device)
    freeze_bottom(model, cfg.train.freeze_embeddings, cfg.train.freeze_layers)
    if cfg.train.gradient_checkpointing:  # non-reentrant: works with frozen embeddings (inputs needing no grad)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int) -> Any:
    """Linear, cosine or constant schedule with warmup (steps, or a ratio of ``total_steps``), or one cycle
    whose rise takes the warmup."""
    t = cfg.train
    warmup = t.warmup_steps if t.warmup_steps is not None else math.ceil(t.warmup_ratio * total_steps)
    if t.schedule == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps,
            pct_start=min(max(warmup, 1) / total_steps, 0.99), anneal_strategy="cos", div_factor=25.0,
            final_div_factor=1e4,
        )
    name = "constant_with_warmup" if t.schedule == "constant" else t.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def class_weight_tensor(cfg: Config, labels: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """The loss weight per class that ``train.class_weights`` asks for (:func:`sentiment.data.loss_class_weights`), or None."""
    weights = loss_class_weights(cfg.train.class_weights, labels, cfg.model.num_labels)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)


def training_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None, cfg: Config,
                  class_weights: torch.Tensor | None) -> torch.Tensor:
    """The loss a micro-batch trains with: cross-entropy (class-weighted when ``class_weights``), or
    with ``train.teacher`` the distillation loss against the teacher's logits for these rows."""
    if teacher_logits is None:
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=class_weights)
    return distillation_loss(logits, labels, teacher_logits, cfg.train.distill_alpha, cfg.train.distill_temperature, class_weights)


def _autocast(cfg: Config, device: torch.device) -> torch.autocast:
    dtype = autocast_dtype(cfg.train.precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_precision(cfg: Config, device: torch.device, rank: int, world: int) -> Config:
    """``cfg`` with ``train.precision: auto`` made concrete, the same on every rank (bf16 only if
    every worker's device runs it natively); any other precision is returned as asked."""
    if cfg.train.precision != "auto":
        return cfg
    precision = agreed_precision(gather_from_ranks(auto_precision(device), world))
    why = "every worker's" if precision == "bf16" else "not every worker's"
    log_rank0(rank, f"precision: auto -> {precision} ({why} {device.type} runs bf16 natively)")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, cfg: Config, collate: Any, device: torch.device, prefix: str) -> dict[str, Any]:
    """Metrics over the whole split: each rank scores its share, logits are gathered to all ranks."""
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
    return compute_metrics(logits, split.labels, cfg.model.label_names, prefix=prefix)


def gather_from_ranks(value: Any, world: int) -> list[Any]:
    """``value`` from every rank, in rank order."""
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def save_checkpoint(engine: Any, tokenizer: Any, cfg: Config, state: TrainState, metrics: dict[str, Any], rank: int, folder: Path) -> None:
    """Write this rank's part of an epoch checkpoint into ``folder`` (a fresh temp folder).

    Every rank writes its DeepSpeed shard; rank 0 also writes the plain Hugging Face model
    (ZeRO-3 parameters gathered first) and the train state. Ray merges the ranks' folders.
    """
    import deepspeed

    engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DS_TAG, client_state={"train_state": asdict(state)})
    params = list(engine.module.parameters()) if cfg.deepspeed.zero_stage == 3 else []
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
        if rank == 0:
            save_model_dir(engine.module, tokenizer, cfg, metrics, folder / MODEL_DIR)
    if rank == 0:
        storage.write_local_json(folder / STATE_FILE, asdict(state))


def report_epoch(engine: Any, tokenizer: Any, cfg: Config, state: TrainState, metrics: dict[str, Any],
                 scalars: dict[str, Any], rank: int, world: int) -> None:
    """Write the epoch checkpoint, check the storage has room for it, and report it to Ray Train
    with ``scalars`` and the best epoch so far (every rank calls this).

    Raises:
        StorageFullError: the storage has less free space than the ranks' parts together.
    """
    with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
        save_checkpoint(engine, tokenizer, cfg, state, metrics, rank, Path(tmp))
        parts = gather_from_ranks(storage.file_sizes(pafs.LocalFileSystem(), tmp), world)  # Ray merges the ranks' folders
        needed = sum({name: size for part in parts for name, size in part.items()}.values())
        storage.check_free_space(layout.storage_root(cfg), needed, f"the epoch {state.epoch} checkpoint")
        best = {"best_epoch": state.best_epoch, "best_value": state.best_metric, "best_checkpoint": state.best_checkpoint}
        ray.train.report(scalars | best, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=epoch_dir_name(state.epoch))


def restore(engine: Any, cfg: Config, rank: int) -> TrainState:
    """Load model, optimizer, scheduler and train state from Ray's checkpoint, if there is one.

    The checkpoint is the run's latest (after a worker failure or a rerun of the same run name)
    or ``run.resume_from`` on a fresh run.

    Raises:
        RuntimeError: the checkpoint is corrupt or from another model/DeepSpeed layout.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.run.resume_from:
        fs, path = storage.filesystem(cfg.run.resume_from)
        checkpoint = ray.train.Checkpoint(path, filesystem=fs)
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as folder:
        try:
            path, client = engine.load_checkpoint(os.path.join(folder, DEEPSPEED_DIR), tag=DS_TAG)
        except Exception as err:
            # one line, no chained traceback: Ray shows the start of a worker's error, and it must be this
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RuntimeError(f"cannot resume from checkpoint {checkpoint.path!r}: {reason}") from None
        if path is None or not client or "train_state" not in client:
            raise RuntimeError(f"cannot resume from checkpoint {checkpoint.path!r}: no DeepSpeed state in it")
    state = TrainState(**client["train_state"])
    log_rank0(rank, f"resumed from {checkpoint.path} at epoch {state.epoch}, step {state.global_step}")
    return state


def check_room_to_go_on(cfg: Config, state: TrainState) -> None:
    """On a restart, fail at once (not an epoch later) when the storage cannot hold another
    checkpoint as large as the one resumed from: a full disk does not heal by retrying.

    Raises:
        StorageFullError: naming the storage path and the space needed.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        needed = sum(storage.file_sizes(checkpoint.filesystem, checkpoint.path).values())
        storage.check_free_space(layout.storage_root(cfg), needed,
                                f"the epoch {state.epoch + 1} checkpoint (as large as epoch {state.epoch}'s)")


def _prepare_splits(config: dict[str, Any], cfg: Config, tokenizer: Any) -> dict[str, Split]:
    encoded: dict[str, EncodedSplit] = config["data"]
    if isinstance(encoded, ray.ObjectRef):
        encoded = ray.get(encoded)
    specials = SpecialTokens.of(tokenizer)
    splits = {name: Split(model_inputs(s, specials, cfg.data), s.labels, teacher_logits=s.teacher_logits)
              for name, s in encoded.items()}
    if "test" in encoded and cfg.data.long_reviews == "chunks":  # the test scores whole reviews, as predictions do
        windows, owners = chunked_inputs(encoded["test"].ids, specials, cfg.data.max_seq_length, cfg.data.chunk_stride)
        splits["test"] = Split(windows, encoded["test"].labels, owners)
    return splits


def progress_line(state: TrainState, total: int, loss: float, lr: float, samples_per_s: float, eta_s: float, epoch: int) -> str:
    """The periodic training line: step, epoch, loss, lr, samples/s and time left."""
    eta = f"{int(eta_s // 60)}m{int(eta_s % 60):02d}s"
    return (
        f"step {state.global_step}/{total} | epoch {epoch} | loss {loss:.4f} | lr {lr:.2e} | "
        f"{samples_per_s:.1f} samples/s | ETA {eta}"
    )


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
    window_loss = torch.zeros((), device=device)
    epoch_loss = torch.zeros((), device=device)
    epoch_correct = torch.zeros((), device=device)
    window_n = 0
    t0 = tw = time.perf_counter()
    steps_done_at_start = state.global_step
    teacher = None if split.teacher_logits is None else torch.from_numpy(split.teacher_logits)
    for micro, (idx, batch) in enumerate(iterate(split.inputs, split.labels, batches, ctx.collate), start=1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = engine(**batch).logits
        loss = training_loss(logits, labels, None if teacher is None else teacher[idx].to(device), cfg, ctx.class_weights)
        engine.backward(loss)
        engine.step()
        window_loss += loss.detach()
        epoch_loss += loss.detach()
        epoch_correct += (logits.detach().argmax(dim=-1) == labels).sum()
        window_n += 1
        if micro % cfg.train.grad_accum_steps:
            continue
        state.global_step += 1
        if state.global_step % cfg.train.log_every_steps == 0:
            mean = window_loss.item() / window_n  # the only host sync, every log_every_steps
            now = time.perf_counter()
            rate = window_n * cfg.train.batch_size * world / (now - tw)
            per_step = (now - t0) / max(1, state.global_step - steps_done_at_start)
            eta = per_step * (ctx.total_steps - state.global_step)
            lr = engine.get_lr()[0]
            log_rank0(rank, progress_line(state, ctx.total_steps, mean, lr, rate, eta, state.epoch + 1))
            tracker.log({"train/loss": mean, "train/lr": lr, "train/samples_per_s": rate,
                         "train/epoch": state.epoch + micro / len(batches)}, step=state.global_step)
            window_loss.zero_()
            window_n, tw = 0, now
    totals = torch.stack([epoch_loss, epoch_correct.float()])
    dist.all_reduce(totals)  # every rank ran len(batches) full micro-batches
    micro_batches = max(1, len(batches)) * world
    return totals[0].item() / micro_batches, totals[1].item() / (micro_batches * cfg.train.batch_size)


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
        metrics = evaluate(model, splits["test"], cfg, ctx.collate, ctx.device, prefix="test_")
        metrics["test_epoch"], metrics["test_checkpoint"] = state.best_epoch, state.best_checkpoint
        if ctx.rank == 0:
            layout.write_test_metrics(fs, ctx.run_dir, metrics)  # and the tested folder's model card
            tracker.summary(scalar_metrics(metrics))
            tracker.log({f"test/{k.removeprefix('test_')}": v for k, v in scalar_metrics(metrics).items()}, step=state.global_step)
            tracker.log_model(local, name=f"model-{ctx.run_name}", aliases=["best", f"epoch-{state.best_epoch}"],
                              metadata=scalar_metrics(metrics))
    return metrics


def use_the_prebuilt_deepspeed_op() -> None:
    """Point DeepSpeed's JIT build of its CPU all-reduce op at the one scripts/setup.sh made.

    The op is cached per virtualenv (a shared cache makes two venvs rebuild it in turn, and a build
    killed midway leaves a lock file that makes every later start wait forever). The build runs
    ``ninja`` from PATH, so this venv's own (pip's, the one setup.sh built with) goes first:
    another version on PATH (Debian's 1.11 against pip's 1.13) reads the build log as stale and
    rebuilds the op, about a minute on 2 cores, each time the two alternate.
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def worker_setup(config: dict[str, Any]) -> tuple[Config, int, int, torch.device, Any, dict[str, Split]]:
    """What every worker function starts with: its config, rank, world size, device (threads and
    seed set), tokenizer and splits."""
    cfg = config_from_dict(config["cfg"], "train_loop_config")
    tctx = ray.train.get_context()
    device = worker_device(cfg)
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    cfg = resolve_precision(cfg, device, rank, world)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    return cfg, rank, world, device, tokenizer, _prepare_splits(config, cfg, tokenizer)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train, validate and checkpoint every epoch, then test the best epoch's model (if a test split came).

    Args:
        config: ``{"cfg": <Config as dict>, "data": <ObjectRef or dict of EncodedSplit>,
            "run_name": str, "wandb_dir": str}``.
    """
    use_the_prebuilt_deepspeed_op()
    import deepspeed

    cfg, rank, world, device, tokenizer, splits = worker_setup(config)
    tctx = ray.train.get_context()
    model = build_train_model(cfg, device)
    # train_batches plans full global batches, cropped to a multiple of the accumulation steps.
    steps_per_epoch = len(splits["train"]) // (cfg.train.batch_size * world) // cfg.train.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(splits['train'])} training examples make no full step of batch {cfg.train.batch_size} "
            f"x accumulation {cfg.train.grad_accum_steps} x {world} workers; lower train.batch_size"
        )
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = build_optimizer(model, cfg, device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=build_scheduler(optimizer, cfg, total_steps),
        config=build_deepspeed_config(cfg, world),
    )
    from ray_jobs.safe_load import use_weights_only_loads  # after deepspeed: it subclasses its engine

    use_weights_only_loads(engine)
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
             " | ".join(f"{k} {metrics[k]:.4f}" for k in ("val_loss", "val_accuracy", "val_f1")) +
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
