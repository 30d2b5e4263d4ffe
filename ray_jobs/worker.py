"""The worker runtime every training recipe runs on (fine-tuning, pretraining, the LR range test).

What a Ray Train worker starts with (config, rank, device, threads, seed, tokenizer, splits), the
model, optimizer, schedule and DeepSpeed engine, the one micro-batch loop (the recipe gives its
loss as a function), the loss a classifier trains with, rank-0 logging and progress lines, and
each epoch's checkpoint and report (restored on a restart). The recipes are
``ray_jobs.train_loop`` (fine-tuning), ``ray_jobs.pretrain`` and ``ray_jobs.lr_find``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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
from transformers import get_scheduler

from ray_jobs.deepspeed_config import build_deepspeed_config
from sentiment import layout, storage
from sentiment.config import Config, config_from_dict
from sentiment.data import EncodedSplit, SpecialTokens, chunked_inputs, loss_class_weights, model_inputs
from sentiment.distillation import distillation_loss
from sentiment.layout import DEEPSPEED_DIR, MODEL_DIR, STATE_FILE, epoch_dir_name
from sentiment.model import build_model, freeze_bottom, layer_lr_scales, load_tokenizer
from sentiment.model_folder import save_model_dir
from sentiment.precision import agreed_precision, auto_precision

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
    with ``train.teacher`` the distillation loss against the teacher's logits for these rows; a
    multi-label model's is binary cross-entropy per label (``class_weights`` weigh each label's
    positives: ``pos_weight``)."""
    if cfg.model.multi_label:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=class_weights)
    if teacher_logits is None:
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=class_weights)
    return distillation_loss(logits, labels, teacher_logits, cfg.train.distill_alpha, cfg.train.distill_temperature, class_weights)


def resolve_precision(cfg: Config, device: torch.device, rank: int, world: int) -> Config:
    """``cfg`` with ``train.precision: auto`` made concrete, the same on every rank (bf16 only if
    every worker's device runs it natively); any other precision is returned as asked."""
    if cfg.train.precision != "auto":
        return cfg
    precision = agreed_precision(gather_from_ranks(auto_precision(device), world))
    why = "every worker's" if precision == "bf16" else "not every worker's"
    log_rank0(rank, f"precision: auto -> {precision} ({why} {device.type} runs bf16 natively)")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})


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
            save_model_dir(engine.module, tokenizer, with_thresholds(cfg, metrics), metrics, folder / MODEL_DIR)
    if rank == 0:
        storage.write_local_json(folder / STATE_FILE, asdict(state))


def with_thresholds(cfg: Config, metrics: dict[str, Any]) -> Config:
    """``cfg`` as an epoch's model folder records it: a multi-label model's ``model.thresholds`` are the
    ones its validation metrics used (tuned on that split unless the config fixed them)."""
    if not cfg.model.multi_label:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"thresholds": metrics["val_thresholds"]})})


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


def prepare_splits(config: dict[str, Any], cfg: Config, tokenizer: Any) -> dict[str, Split]:
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


@dataclass(frozen=True)
class OptimizerStep:
    """One optimizer step of :func:`optimizer_steps`: its micro-batches' summed loss (detached, still
    on the device: reading it is a host sync) and the learning rate the step used."""

    loss: torch.Tensor
    lr: float


def optimizer_steps(engine: Any, micro_batches: Iterable[Any], loss_of: Callable[[Any], torch.Tensor],
                    grad_accum_steps: int) -> Iterator[OptimizerStep]:
    """The micro-batch loop of every recipe: ``loss_of(micro_batch)`` (the forward pass and the
    recipe's loss), then the engine's backward and step, for each micro-batch; DeepSpeed steps the
    optimizer every ``grad_accum_steps`` of them, and each such step is yielded."""
    step_loss: torch.Tensor | None = None
    for micro, batch in enumerate(micro_batches, start=1):
        loss = loss_of(batch)
        engine.backward(loss)
        step_loss = loss.detach().float() if step_loss is None else step_loss + loss.detach().float()
        if micro % grad_accum_steps:
            engine.step()  # accumulates; DeepSpeed steps the optimizer on the last micro-batch
            continue
        lr = engine.get_lr()[0]  # the rate this optimizer step uses
        engine.step()
        yield OptimizerStep(step_loss, lr)
        step_loss = None


@dataclass
class ProgressWindow:
    """Every ``train.log_every_steps`` optimizer steps: rank 0's progress line (loss, rate, ETA)
    and the same figures to W&B as ``<prefix>/loss``, ``/lr`` and ``/samples_per_s``, over the
    micro-batches since the last line."""

    cfg: Config
    state: TrainState
    rank: int
    world: int
    total_steps: int
    tracker: Any
    prefix: str
    loss: torch.Tensor | None = None
    micro_batches: int = 0
    start_step: int = field(init=False)
    t0: float = field(init=False)
    since: float = field(init=False)

    def __post_init__(self) -> None:
        self.start_step = self.state.global_step
        self.t0 = self.since = time.perf_counter()

    def after_step(self, engine: Any, step: OptimizerStep, extra: dict[str, float] | None = None) -> None:
        """Count one optimizer step (``state.global_step``) and log when a line is due."""
        self.state.global_step += 1
        self.loss = step.loss if self.loss is None else self.loss + step.loss
        self.micro_batches += self.cfg.train.grad_accum_steps
        if self.state.global_step % self.cfg.train.log_every_steps:
            return
        mean, now = self.loss.item() / self.micro_batches, time.perf_counter()  # the only host sync
        rate = self.micro_batches * self.cfg.train.batch_size * self.world / (now - self.since)
        eta = (now - self.t0) / max(1, self.state.global_step - self.start_step) * (self.total_steps - self.state.global_step)
        lr = engine.get_lr()[0]
        log_rank0(self.rank, progress_line(self.state, self.total_steps, mean, lr, rate, eta, self.state.epoch + 1))
        self.tracker.log({f"{self.prefix}/loss": mean, f"{self.prefix}/lr": lr, f"{self.prefix}/samples_per_s": rate,
                          **(extra or {})}, step=self.state.global_step)
        self.loss, self.micro_batches, self.since = None, 0, now


def start_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Config, world: int) -> Any:
    """The DeepSpeed engine for ``model`` (this config's DeepSpeed JSON for ``world`` ranks), whose
    checkpoint loads read tensors only (``ray_jobs.safe_load``)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=build_deepspeed_config(cfg, world))
    from ray_jobs.safe_load import use_weights_only_loads  # after deepspeed: it subclasses its engine

    use_weights_only_loads(engine)
    return engine


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
    return cfg, rank, world, device, tokenizer, prepare_splits(config, cfg, tokenizer)

