"""The driver's side of a training job: check what can be checked before Ray, prepare the data
once, build the ``TorchTrainer`` and launch it, and write the run's ``result.json``.

The commands (``ray_jobs.train``, ``ray_jobs.lr_find``, ``ray_jobs.pretrain``, ``tune.sweep``,
``tune.cv``) and the benchmarks launch through this module; what runs on each worker is
``ray_jobs.train_loop``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from typing import Any, Callable

import numpy as np
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_jobs.batch_inference import cluster_has_gpus, default_workers, logit_column, quiet_ray_data, score_texts
from ray_jobs.local_ray import init_ray
from ray_jobs.train_loop import train_loop_per_worker
from sentiment import layout, storage
from sentiment.config import Config, ConfigError, output_name
from sentiment.data import EncodedSplit, check_folds, cross_validation_fold, encode_splits, imbalance, load_splits, loss_class_weights
from sentiment.distillation import check_teacher_labels
from sentiment.layout import EPOCH_CHECKPOINT_PARTS, RESULT_FILE, STATE_FILE, TEST_METRICS_FILE, ResolvedModel
from sentiment.model import load_tokenizer


def tokenized_splits(cfg: Config) -> dict[str, EncodedSplit]:
    """Load, clean, split and tokenize the data once, on the driver (in cross-validation, the pool).

    With ``train.teacher`` the training reviews also get the teacher's logits (Ray Data, on the
    Ray this starts or joins), once for the whole run.
    """
    t0 = time.perf_counter()
    splits = load_splits(cfg.data, cfg.model.label_names, cfg.model.multi_label)
    encoded = encode_splits(load_tokenizer(cfg.model.name_or_path), splits)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in encoded.items())
    print(f"data: {sizes} reviews, tokenized in {time.perf_counter() - t0:.1f}s", flush=True)
    if cfg.train.teacher is not None:
        train = encoded["train"]
        encoded["train"] = EncodedSplit(train.ids, train.labels, teacher_logits(cfg, splits["train"]["text"]))
    return encoded


def check_teacher(cfg: Config) -> ResolvedModel | None:
    """Resolve ``train.teacher`` and check that it predicts the student's labels.

    Raises:
        ConfigError: the teacher is not a usable checkpoint, is multi-label, or its labels differ.
    """
    if cfg.train.teacher is None:
        return None
    try:
        teacher = layout.resolve(cfg.train.teacher, storage_path=layout.storage_root(cfg))
    except layout.CheckpointError as err:
        raise ConfigError(f"train.teacher: {err}") from None
    if teacher.config.model.multi_label:
        raise ConfigError(f"train.teacher: {teacher.location} is a multi-label model; distillation needs a single-label teacher")
    check_teacher_labels(cfg.train.teacher, teacher.config.model.label_names, cfg.model.label_names)
    return teacher


def teacher_logits(cfg: Config, texts: list[str]) -> np.ndarray:
    """The teacher's logits for ``texts`` (float32, ``(n, num_labels)``), by Ray Data batch inference
    with one model actor per CPU (per GPU on a GPU cluster).

    The teacher reads each review truncated, with its own ``max_seq_length`` and ``truncation``:
    like the student in training, one window per review, whatever ``long_reviews`` the teacher
    predicts with (whole-review logits took longer and did no better: bench/RESULTS.md,
    "Recipe A/B tests").
    """
    teacher = check_teacher(cfg)
    init_ray()
    quiet_ray_data()
    use_gpu = cluster_has_gpus()
    frame, rate = score_texts(list(texts), teacher, default_workers(use_gpu), use_gpu, label="teacher logits",
                               long_reviews="truncate")
    print(f"teacher logits: {len(texts)} training reviews scored by {teacher.location} at {rate:.0f} reviews/s", flush=True)
    return frame[[logit_column(name) for name in cfg.model.label_names]].to_numpy(np.float32)


def prepare_data(cfg: Config) -> dict[str, EncodedSplit]:
    """The splits a run trains on: train/validation/test, or with ``data.cv_folds`` its fold's two.

    Raises:
        ConfigError: more folds than the pool's smallest class has reviews.
    """
    encoded = tokenized_splits(cfg)
    if cfg.data.cv_folds is not None:
        check_folds(encoded["train"].labels, cfg.data.cv_folds, cfg.model.label_names)
        encoded = cross_validation_fold(encoded["train"], cfg.data)
    if note := imbalance(encoded["train"].labels, cfg.model.label_names):
        weighed = loss_class_weights(cfg.train.class_weights, encoded["train"].labels, cfg.model.num_labels) is not None
        weights = "label positive weights" if cfg.model.multi_label else "class weights"
        print(f"data: {note}: " + (f"{weights} on (train.class_weights=none turns them off)" if weighed
                                   else f"no {weights} (train.class_weights=auto or balanced weighs them)"), flush=True)
    return encoded


def check_resume_from(cfg: Config) -> None:
    """Fail early if ``run.resume_from`` is not a complete epoch checkpoint.

    Raises:
        ConfigError: naming the missing part.
    """
    if cfg.run.resume_from is None:
        return
    fs, path = storage.filesystem(cfg.run.resume_from)
    for part in EPOCH_CHECKPOINT_PARTS:
        if not storage.exists(fs, storage.join(path, part)):
            raise ConfigError(f"run.resume_from={cfg.run.resume_from!r} is not an epoch checkpoint: no {part}")


def check_storage(cfg: Config) -> None:
    """Fail early if ``run.storage_path`` names a filesystem that is not installed or reachable.

    Raises:
        ConfigError: naming the path and pyarrow's reason.
    """
    location = layout.storage_root(cfg)
    try:
        fs, path = storage.filesystem(location)
        fs.get_file_info(path)
    except Exception as err:
        raise ConfigError(f"run.storage_path={cfg.run.storage_path!r} cannot be used: {err}") from None


def check_resources(cfg: Config) -> None:
    """Compare what the workers need with what the cluster has or its autoscaler can add.

    Raises:
        ConfigError: more than the cluster can ever hold (a Ray without an autoscaler cannot
            grow). When only the autoscaler can supply it, a warning says training waits.
    """
    s = cfg.scaling
    needs = {"CPU": s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        needs["GPU"] = s.num_workers * s.gpus_per_worker
    for res, amount in s.resources_per_worker.items():
        needs[res] = needs.get(res, 0) + s.num_workers * amount
    have = ray.cluster_resources()
    ceiling = _autoscaler_ceiling()
    for res, need in needs.items():
        now = have.get(res, 0)
        most = max(now, (ceiling or {}).get(res, 0))
        if most + 1e-9 < need:
            raise ConfigError(
                f"scaling.num_workers={s.num_workers} needs {need:g} {res} in all, but the cluster has "
                f"{now:g}" + (f" and its autoscaler can reach {most:g}" if ceiling else "") +
                "; lower scaling.num_workers or the per-worker resources"
            )
        if now + 1e-9 < need:
            print(f"warning: {need:g} {res} needed, {now:g} now: waiting for the autoscaler", file=sys.stderr, flush=True)


@ray.remote(num_cpus=0)
def _storage_problem_here(root: str, marker: str) -> tuple[str, str | None]:
    """This node's hostname, and why it cannot read ``marker`` under ``root`` (None when it can)."""
    try:
        fs, _ = storage.filesystem(root)
        if not storage.is_file(fs, marker):
            return socket.gethostname(), ("it does not see what the driver wrote there: a folder on each node's own disk, "
                                          "not shared storage (use s3://, gs:// or a filesystem every node mounts)")
    except Exception as err:  # pyarrow's filesystems fail in their own types
        return socket.gethostname(), f"{type(err).__name__}: {err}"
    return socket.gethostname(), None


def check_storage_from_every_node(cfg: Config, timeout_s: float = 120) -> None:
    """On a cluster of several hosts, fail before training unless every node can read what the
    driver writes to ``run.storage_path`` (a node that cannot reach the bucket, or a local folder
    that is not shared); a single host needs nothing more than :func:`check_storage`.

    Raises:
        ConfigError: one line naming the first node that cannot (address, hostname) and why, or
            saying that not every node answered within ``timeout_s``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len({n["NodeManagerAddress"] for n in nodes}) < 2:
        return
    root = layout.storage_root(cfg)
    fs, path = storage.filesystem(root)
    created = not storage.exists(fs, path)
    marker = storage.join(path, f".storage-check-{uuid.uuid4().hex[:12]}")
    fs.create_dir(path, recursive=True)
    storage.write_file(fs, marker, b"written by the driver")
    try:
        checks = [_storage_problem_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(root, marker) for n in nodes]
        seen = ray.get(checks, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ConfigError(f"run.storage_path={cfg.run.storage_path!r}: not every node answered the storage check "
                          f"within {timeout_s:.0f} s") from None
    finally:
        fs.delete_file(marker)
        if created:
            fs.delete_dir(path)
    for node, (hostname, problem) in sorted(zip(nodes, seen), key=lambda pair: pair[0]["NodeManagerAddress"]):
        if problem:
            raise ConfigError(f"run.storage_path={cfg.run.storage_path!r} cannot be used from the node at "
                              f"{node['NodeManagerAddress']} ({hostname}): {problem}")


def _autoscaler_ceiling() -> dict[str, float] | None:
    """The most of each resource the cluster's autoscaler config allows (None: no autoscaler)."""
    from ray._private.state import state  # what `ray status` reads; no public API for it yet

    try:
        return state.get_max_resources_from_cluster_config()
    except Exception:
        return None


def wandb_dir(storage_path: str, run_name: str) -> str:
    """W&B's local folder: inside the run folder on local storage, else ``./wandb``."""
    return "wandb" if storage.is_uri(storage_path) else os.path.join(storage_path, run_name, "wandb")


def build_trainer(
    cfg: Config, data: Any, run_name: str, storage_path: str,
    callbacks: list[Any] | None = None, worker_env: dict[str, str] | None = None,
    loop: Callable[[dict[str, Any]], None] = train_loop_per_worker, loop_config: dict[str, Any] | None = None,
) -> TorchTrainer:
    """The ``TorchTrainer`` for this config (scaling, storage, checkpoints, fault tolerance).

    ``callbacks`` are Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` in a sweep trial;
    ``worker_env`` adds environment variables for the workers; ``loop`` is the worker function
    (``ray_jobs.lr_find`` runs its own) and ``loop_config`` adds to what it receives.
    """
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    # Plain prints from workers (Train V2 would re-log them, and W&B's console capture doubles them).
    # WANDB_SERVICE empty: each rank 0 starts its own W&B service instead of inheriting a service of
    # the process that started Ray (one that ran wandb.init); a killed worker's run would stay open
    # there and its restart would be refused ("run ID ... is in use"). A sweep passes its own.
    env = {"DS_ACCELERATOR": "cuda" if s.use_gpu else "cpu", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "WANDB_SERVICE": "", **(worker_env or {})}
    # A URI's filesystem comes from storage.filesystem (the one place that builds it, query options
    # such as ?endpoint_override= included); Ray then addresses runs by paths on that filesystem.
    fs, fs_path = storage.filesystem(storage_path)
    remote = storage.is_uri(storage_path)
    return TorchTrainer(
        loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "data": data,
            "run_name": run_name,
            "wandb_dir": cfg.tracking.dir or wandb_dir(storage_path, run_name),
            **(loop_config or {}),
        },
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=fs_path if remote else storage_path,
            storage_filesystem=fs if remote else None,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.checkpoints_to_keep,
                checkpoint_score_attribute=cfg.run.metric,
                checkpoint_score_order=cfg.run.mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=callbacks,
        ),
    )


def summarize(cfg: Config, result: Any, run_name: str, storage_path: str) -> dict[str, Any]:
    """Write ``result.json`` in the run folder (best/last checkpoint, metrics) and return it.

    A cross-validation fold has no test metrics (``None``); its best epoch is the one training
    reported last as best.
    """
    fs, root = storage.filesystem(storage_path)
    run_dir = storage.join(root, run_name)
    if cfg.data.cv_folds is None:
        test = storage.read_json(fs, storage.join(run_dir, TEST_METRICS_FILE))
        best, epoch = test["test_checkpoint"], test["test_epoch"]  # in the run resumed from, if it was better
    else:
        test, best, epoch = None, result.metrics["best_checkpoint"], result.metrics["best_epoch"]
    summary = {
        "run_name": run_name,
        "run_dir": run_dir,
        "best_checkpoint": best,
        "last_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "best_metrics": storage.read_json(fs, storage.join(best, STATE_FILE))["history"][epoch - 1],
        "test_metrics": test,
        "metric": cfg.run.metric,
        "config": cfg.model_dump(mode="json"),
    }
    storage.write_json(fs, storage.join(run_dir, RESULT_FILE), summary)
    return summary


def launch(
    cfg: Config, data: Any = None, callbacks: list[Any] | None = None, worker_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one training job on the current Ray (``init_ray`` first) and return ``result.json``.

    Args:
        cfg: validated config.
        data: pre-tokenized splits, or an ObjectRef to them (a sweep shares one encoding across
            trials); loaded when None.
        callbacks: Ray Train callbacks passed to the trainer.
        worker_env: extra environment variables for the workers.

    Raises:
        ray.train.TrainingFailedError: the workers failed more than ``run.max_failures`` times.
    """
    data = data if data is not None else prepare_data(cfg)
    run_name = output_name(cfg, "train")
    storage_path = layout.storage_root(cfg)
    ref = data if isinstance(data, ray.ObjectRef) else ray.put(data)
    trainer = build_trainer(cfg, ref, run_name, storage_path, callbacks, worker_env)
    result = trainer.fit()
    return summarize(cfg, result, run_name, storage_path)

