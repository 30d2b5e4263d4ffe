"""Hyperparameter sweep: Ray Tune over real Ray Train + DeepSpeed runs.

    python -m tune.sweep --config configs/sweep.yaml [section.key=value ...] [--resume]

Each trial is a small driver function that builds and fits a ``TorchTrainer`` from the trial's
config (the Ray Train V2 pattern; ``Tuner(TorchTrainer)`` is the V1 form and fails under V2),
reporting every epoch to Tune through ``TuneReportCallback``. ASHA stops weak trials at epoch
rungs; Optuna's TPE (or random search) proposes the next ones. The data is tokenized once and
shared by every trial through Ray's object store.

Epochs as a searched value: each trial's LR schedule spans its own ``train.epochs`` (a 1-epoch
trial warms up and decays within one epoch), and ASHA compares trials at the same epoch
(``time_attr="epoch"``, ``max_t`` = the largest epoch count searched). At an early rung a short
trial has finished its decay while a long one is mid-schedule, which favours short trials there;
we accept that bias rather than distort each trial's schedule, and a trial that completes its own
epochs is never counted as stopped early.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from pydantic import Field
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ray_jobs.launcher import check_storage, check_storage_from_every_node, launch, prepare_data, wandb_dir
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import shared_service, start_tracking
from sentiment import layout, storage
from sentiment.cli import TrainingCommand, parse_command
from sentiment.config import Config, ConfigError, config_from_dict, deep_merge, load_config, output_name
from sentiment.layout import BEST_FILE, SWEEP_RESULTS_FILES
from sentiment.node_cache import open_local


def unflatten(params: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-4}`` -> ``{"train": {"lr": 1e-4}}``."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def validate_space(cfg: Config) -> None:
    """Check the search space before any trial starts.

    Every key must be a config key, and every value the space can produce (each choice, both
    ends of each range) must make a valid config.

    Raises:
        ConfigError: an empty space, an unknown key, a value the config rejects, or ``grid``
            with the Optuna searcher.
    """
    space = cfg.sweep.space
    if not space:
        raise ConfigError("sweep.space is empty: give at least one key to search, e.g. train.lr")
    base = cfg.model_dump(mode="json")
    for key, spec in space.items():
        if key.startswith("sweep.") or key.count(".") != 1:
            raise ConfigError(f"sweep.space key {key!r} must be section.key of the training config")
        section, field = key.split(".")
        if section not in base or field not in base[section]:
            raise ConfigError(f"sweep.space key {key!r} is not a config key")
        if spec.type == "grid" and cfg.sweep.search != "random":
            raise ConfigError(f"sweep.space.{key}: grid needs sweep.search=random")
        values = spec.values if spec.values is not None else [spec.low, spec.high]
        if spec.type == "randint":
            values = [int(spec.low), int(spec.high) - 1]
        for value in values:
            try:
                config_from_dict(deep_merge(base, unflatten({key: value})), f"sweep.space.{key}={value!r}")
            except ConfigError as err:
                raise ConfigError(f"sweep.space.{key} can produce {value!r}, which the config rejects:\n{err}") from None


def param_space(cfg: Config) -> dict[str, Any]:
    """The Tune search space (flat dotted keys) for the configured specs."""
    build = {
        "loguniform": lambda s: tune.loguniform(s.low, s.high),
        "uniform": lambda s: tune.uniform(s.low, s.high),
        "randint": lambda s: tune.randint(int(s.low), int(s.high)),
        "choice": lambda s: tune.choice(s.values),
        "grid": lambda s: tune.grid_search(s.values),
    }
    return {key: build[spec.type](spec) for key, spec in cfg.sweep.space.items()}


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds: its driver plus its training workers."""
    s = cfg.scaling
    need = {"CPU": cfg.sweep.driver_cpus + s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        need["GPU"] = s.num_workers * s.gpus_per_worker
    return need


def concurrency(cfg: Config, cluster: dict[str, float]) -> int:
    """How many trials run side by side: ``sweep.max_concurrent_trials`` or what fits.

    Raises:
        ConfigError: one trial does not fit the cluster, or the asked concurrency does not.
    """
    need = trial_resources(cfg)
    fits = min(math.floor(cluster.get(r, 0.0) / amount + 1e-9) for r, amount in need.items())
    asked = cfg.sweep.max_concurrent_trials
    described = ", ".join(f"{v:g} {k}" for k, v in need.items())
    if fits < 1:
        raise ConfigError(f"one trial needs {described} but the cluster has {dict(cluster)}; lower scaling.*")
    if asked is not None and asked > fits:
        raise ConfigError(
            f"sweep.max_concurrent_trials={asked} needs {asked} x ({described}) but the cluster holds {fits}"
        )
    return asked or fits


def run_trial(
    params: dict[str, Any], base: dict[str, Any], data: Any, sweep_name: str, sweep_dir: str, worker_env: dict[str, str]
) -> None:
    """One Tune trial: a ``TorchTrainer`` run of the base config with this trial's values."""
    trial_id = tune.get_context().get_trial_id()
    raw = deep_merge(base, unflatten(params))
    raw = deep_merge(raw, {
        "run": {"name": f"{sweep_name}-{trial_id}", "storage_path": sweep_dir},
        "tracking": {"group": sweep_name},
    })
    launch(config_from_dict(raw, f"trial {trial_id}"), data, callbacks=[TuneReportCallback()], worker_env=worker_env)


def build_tuner(
    cfg: Config, data_ref: Any, sweep_name: str, storage_path: str, resume: bool, worker_env: dict[str, str]
) -> tune.Tuner:
    """A ``Tuner`` over :func:`run_trial`, or one restored from the sweep folder."""
    sweep_dir = storage.child(storage_path, sweep_name)  # a URI keeps its query (?endpoint_override=...) at the end
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.model_dump(mode="json"), data=data_ref,
                             sweep_name=sweep_name, sweep_dir=sweep_dir, worker_env=worker_env),
        {"cpu": cfg.sweep.driver_cpus},
    )
    if resume:
        if not tune.Tuner.can_restore(sweep_dir):
            raise ConfigError(f"--resume: no sweep to resume in {sweep_dir!r} (sweep.name={sweep_name!r})")
        return tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    metric, mode, sw = cfg.run.metric, cfg.run.mode, cfg.sweep
    searched_epochs = sw.space.get("train.epochs")
    max_epochs = max(searched_epochs.values) if searched_epochs and searched_epochs.values else cfg.train.epochs
    scheduler = (
        ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=sw.grace_period, reduction_factor=sw.reduction_factor)
        if sw.scheduler == "asha" else FIFOScheduler()
    )
    # The searcher itself caps concurrency: TuneConfig.max_concurrent_trials alone let a
    # BasicVariantGenerator start every grid trial at once (seen with Ray 2.60).
    limit = concurrency(cfg, ray.cluster_resources())
    search = (
        ConcurrencyLimiter(OptunaSearch(seed=cfg.train.seed), max_concurrent=limit)
        if sw.search == "optuna"
        else BasicVariantGenerator(max_concurrent=limit, random_state=cfg.train.seed)
    )
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=sw.num_samples, search_alg=search, scheduler=scheduler,
        ),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_path),
    )


def trial_outcome(result: Any, metric: str, planned_epochs: int) -> dict[str, Any]:
    """A trial's best metric, epoch and checkpoint as its own training recorded them.

    Every epoch's report carries the run's best so far (``best_epoch``, ``best_value``,
    ``best_checkpoint``), decided by training with its tie rule (a tie moves the best to the later
    epoch, as Ray's checkpoint retention keeps it), so the checkpoint named here is one Ray kept.
    """
    history = result.metrics_dataframe
    status = "errored" if result.error else "ok"
    if history is None or history.empty or "best_checkpoint" not in history:
        return {metric: None, "best_epoch": None, "epochs_run": 0, "stopped_early": False,
                "status": status if result.error else "no result", "wall_time_s": None, "checkpoint": None}
    last = history.iloc[-1]
    epochs_run = int(history["epoch"].max())
    return {
        metric: float(last["best_value"]), "best_epoch": int(last["best_epoch"]), "epochs_run": epochs_run,
        "stopped_early": epochs_run < planned_epochs and result.error is None, "status": status,
        "wall_time_s": round(float(history["time_total_s"].max()), 1), "checkpoint": last["best_checkpoint"],
    }


def results_table(cfg: Config, grid: Any) -> pd.DataFrame:
    """One row per trial: its values, best metric and epoch, epochs run, early stop, time, checkpoint."""
    metric, mode = cfg.run.metric, cfg.run.mode
    rows = []
    for result in grid:
        params = result.config or {}
        row: dict[str, Any] = {"trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name}
        row.update(params)
        row.update(trial_outcome(result, metric, params.get("train.epochs", cfg.train.epochs)))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(metric, ascending=mode == "min", na_position="last").reset_index(drop=True)


def record_best(table: pd.DataFrame, cfg: Config, sweep_name: str, sweep_dir: str, storage_path: str) -> dict[str, Any]:
    """Write ``best.json`` beside the results and at the storage root (what ``best`` resolves to)."""
    ok = table[table["checkpoint"].notna()]
    if ok.empty:
        raise RuntimeError(f"sweep {sweep_name}: no trial produced a checkpoint; see {sweep_dir}")
    top = ok.iloc[0]
    params = {k: top[k] for k in cfg.sweep.space}
    best = {
        "sweep": sweep_name, "trial_id": top["trial_id"], "checkpoint": top["checkpoint"],
        "metric": cfg.run.metric, "value": float(top[cfg.run.metric]), "epoch": int(top["best_epoch"]),
        "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()},
    }
    fs, root = storage.filesystem(storage_path)
    for folder in (sweep_dir, root):
        storage.write_json(fs, storage.join(folder, BEST_FILE), best)
    return best


def write_results(
    table: pd.DataFrame, sweep_dir: str, storage_path: str, names: tuple[str, str] = SWEEP_RESULTS_FILES,
    md_footer: str = "",
) -> None:
    """The results table as CSV and Markdown (``names``) in the sweep folder (local or on a URI's filesystem)."""
    fs, _ = storage.filesystem(storage_path)
    fs.create_dir(sweep_dir, recursive=True)
    csv_name, md_name = names
    for name, text in ((csv_name, table.to_csv(index=False)), (md_name, table.to_markdown(index=False) + "\n" + md_footer)):
        with fs.open_output_stream(storage.join(sweep_dir, name)) as out:
            out.write(text.encode())


def track_sweep(cfg: Config, sweep_name: str, storage_path: str, table: pd.DataFrame, best: dict[str, Any]) -> None:
    """A sweep-level W&B run in the sweep's group: the results table, the best trial and model."""
    tracking = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"group": sweep_name})})
    tracker = start_tracking(tracking, f"{sweep_name}-summary", wandb_dir(storage_path, sweep_name), job_type="sweep")
    if not tracker.enabled:
        return
    import wandb

    tracker.log({"results": wandb.Table(dataframe=table.astype(str))})
    tracker.summary({f"best/{k}": v for k, v in best.items() if k != "params"} | {f"best/{k}": v for k, v in best["params"].items()})
    model = layout.resolve(storage.location_of(storage_path, best["checkpoint"]))
    with open_local(model) as local:
        tracker.log_model(str(local.path), name=f"model-{sweep_name}", aliases=["best"], metadata=best)
    tracker.finish()


def sweep(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep on the current Ray and return the best trial (``best.json``).

    Raises:
        ConfigError: a bad search space or a cluster too small for one trial / the concurrency.
        RuntimeError: no trial produced a checkpoint.
    """
    validate_space(cfg)
    sweep_name = cfg.sweep.name or output_name(cfg, "sweep")
    storage_path = layout.storage_root(cfg)
    sweep_dir = storage.join(storage.filesystem(storage_path)[1], sweep_name)
    concurrency(cfg, ray.cluster_resources())
    data_ref = ray.put(prepare_data(cfg))
    with shared_service(cfg) as wandb_env:  # trials that ASHA stops keep their W&B records
        grid = build_tuner(cfg, data_ref, sweep_name, storage_path, resume, wandb_env).fit()
    table = results_table(cfg, grid)
    write_results(table, sweep_dir, storage_path)
    best = record_best(table, cfg, sweep_name, sweep_dir, storage_path)
    track_sweep(cfg, sweep_name, storage_path, table, best)
    print(f"\nsweep {sweep_name}: {len(table)} trials, ranked by {cfg.run.metric} ({cfg.run.mode})")
    print(table.drop(columns=["checkpoint"]).to_markdown(index=False))
    print(f"\nbest: trial {best['trial_id']} {cfg.run.metric}={best['value']:.4f} at epoch {best['epoch']}")
    print(f"best checkpoint: {storage.location_of(storage_path, best['checkpoint'])}  (serve it with checkpoint=best)")
    print(f"results: {storage.location_of(storage_path, storage.join(sweep_dir, SWEEP_RESULTS_FILES[1]))}")
    return best


class SweepCommand(TrainingCommand):
    """``tune.sweep``'s options: the training config with its ``sweep`` section, and resuming."""

    resume: bool = Field(False, description="Continue the sweep named sweep.name or run.name.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: validate, start or join Ray, sweep (or resume), print the ranked table."""
    args = parse_command(SweepCommand, argv, prog="python -m tune.sweep", description=__doc__.split("\n")[0])
    cfg = load_config(args.config, args.overrides)
    if args.resume and not (cfg.sweep.name or cfg.run.name):
        raise ConfigError("--resume needs sweep.name or run.name (the sweep folder to continue)")
    validate_space(cfg)
    check_storage(cfg)
    init_ray()
    check_storage_from_every_node(cfg)
    return sweep(cfg, resume=args.resume)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
