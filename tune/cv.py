"""k-fold cross-validation: the K folds as parallel Ray Tune trials of the real training job.

    python -m tune.cv --config configs/quickstart.yaml --folds 5 [--name NAME] [--resume] [section.key=value ...]

The training pool (``data.max_train_samples`` of IMDB's train split) is tokenized once and cut
into K stratified, seeded folds (``sentiment.data.cross_validation_fold``); trial k trains on the
other K-1 folds and validates on fold k, through the same Ray Train + DeepSpeed launcher as
``ray_jobs.train`` (its own run folder and W&B run, all in one W&B group). The test split is never
read: cross-validation estimates how a recipe generalizes, it does not pick a model to ship. Each
fold's metrics are those of its best epoch (by ``run.metric``); ``cv.csv`` and ``cv.md`` hold one
row per fold and the mean and sample standard deviation (ddof=1) over the folds.
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
import ray
from pydantic import Field
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import BasicVariantGenerator

from ray_jobs.launcher import check_storage, check_storage_from_every_node, launch, tokenized_splits, wandb_dir
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import start_tracking
from sentiment import layout, storage
from sentiment.cli import TrainingCommand, parse_command
from sentiment.config import Config, ConfigError, config_from_dict, deep_merge, load_config, output_name
from sentiment.data import EncodedSplit, check_folds, cross_validation_fold
from sentiment.layout import CV_RESULTS_FILES
from sentiment.model import check_against_model
from tune.sweep import concurrency, write_results

METRICS = ("val_accuracy", "val_f1", "val_precision", "val_recall", "val_loss", "val_micro_f1", "val_hamming_loss")  # last 2: multi-label


def fold_run_name(cv_name: str, fold: int) -> str:
    """The run (folder and W&B run) of 0-based ``fold``: ``<cv>-fold<k>`` counted from 1."""
    return f"{cv_name}-fold{fold + 1}"


def cut_folds(cfg: Config) -> list[dict[str, EncodedSplit]]:
    """Tokenize the pool once and cut it into each fold's ``train`` and ``validation``.

    Raises:
        ConfigError: more folds than the pool's smallest class has reviews.
    """
    pool = tokenized_splits(cfg)["train"]
    check_folds(pool.labels, cfg.data.cv_folds, cfg.model.label_names)
    folds = [cross_validation_fold(pool, cfg.data.model_copy(update={"cv_fold": k})) for k in range(cfg.data.cv_folds)]
    print(f"cv: {len(pool)} reviews in {len(folds)} stratified folds; each fold trains on "
          f"{min(len(f['train']) for f in folds)}-{max(len(f['train']) for f in folds)} and validates on the rest", flush=True)
    return folds


def run_fold(params: dict[str, Any], base: dict[str, Any], folds: list[Any], cv_name: str, cv_dir: str) -> None:
    """One Tune trial: the training job on fold ``params['data.cv_fold']``."""
    fold = params["data.cv_fold"]
    raw = deep_merge(base, {
        "data": {"cv_fold": fold},
        "run": {"name": fold_run_name(cv_name, fold), "storage_path": cv_dir},
        "tracking": {"group": cv_name},
    })
    launch(config_from_dict(raw, f"fold {fold + 1}"), folds[fold], callbacks=[TuneReportCallback()])


def build_tuner(cfg: Config, folds: list[Any], cv_name: str, storage_path: str, resume: bool) -> tune.Tuner:
    """A ``Tuner`` with one trial per fold, as many at once as the cluster holds, or one restored."""
    cv_dir = storage.child(storage_path, cv_name)  # a URI keeps its query (?endpoint_override=...) at the end
    trainable = tune.with_resources(
        tune.with_parameters(run_fold, base=cfg.model_dump(mode="json"), folds=folds, cv_name=cv_name, cv_dir=cv_dir),
        {"cpu": cfg.sweep.driver_cpus},
    )
    if resume:
        if not tune.Tuner.can_restore(cv_dir):
            raise ConfigError(f"--resume: no cross-validation to resume in {cv_dir!r} (--name {cv_name})")
        return tune.Tuner.restore(cv_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    limit = concurrency(cfg, ray.cluster_resources())
    return tune.Tuner(
        trainable,
        param_space={"data.cv_fold": tune.grid_search(list(range(cfg.data.cv_folds)))},
        tune_config=tune.TuneConfig(
            metric=cfg.run.metric, mode=cfg.run.mode,
            search_alg=BasicVariantGenerator(max_concurrent=limit, random_state=cfg.train.seed),
        ),
        run_config=tune.RunConfig(name=cv_name, storage_path=storage_path),
    )


def fold_row(result: Any) -> dict[str, Any]:
    """One fold's row: its best epoch's validation metrics (by ``run.metric``), or its error."""
    fold = (result.config or {})["data.cv_fold"]
    row: dict[str, Any] = {"fold": fold + 1, "status": "errored" if result.error else "ok"}
    history = result.metrics_dataframe
    if result.error or history is None or history.empty:
        return row | {"status": "errored" if result.error else "no result"}
    last = history.iloc[-1]
    best = history[history["epoch"] == last["best_epoch"]].iloc[-1]
    return row | {"best_epoch": int(last["best_epoch"]), "epochs_run": int(history["epoch"].max())} | {
        m: float(best[m]) for m in METRICS if m in best
    } | {"wall_time_s": round(float(history["time_total_s"].max()), 1)}


def cv_table(cfg: Config, grid: Any) -> pd.DataFrame:
    """Rows for every fold (in fold order), then ``mean`` and ``std`` rows over the folds that finished."""
    table = pd.DataFrame(sorted((fold_row(r) for r in grid), key=lambda row: row["fold"]))
    ok = table[table["status"] == "ok"]
    columns = [m for m in METRICS if m in table]
    summary = pd.DataFrame([
        {"fold": "mean", "status": f"{len(ok)}/{cfg.data.cv_folds} folds"} | ok[columns].mean().to_dict(),
        {"fold": "std", "status": "ddof=1"} | ok[columns].std(ddof=1).to_dict(),
    ])
    return pd.concat([table, summary], ignore_index=True)


def summary_line(cfg: Config, table: pd.DataFrame) -> str:
    """``val_accuracy 0.8510 +/- 0.0123 (mean +/- std over 5 folds)``."""
    metric = cfg.run.metric
    mean, std = (table.loc[table["fold"] == k, metric].iloc[0] for k in ("mean", "std"))
    done = (table["status"] == "ok").sum()
    return f"{metric} {mean:.4f} +/- {std:.4f} (mean +/- sample std over {done} of {cfg.data.cv_folds} folds)"


def track_cv(cfg: Config, cv_name: str, storage_path: str, table: pd.DataFrame) -> None:
    """A W&B run in the folds' group holding the table and the mean and std of each metric."""
    grouped = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"group": cv_name})})
    tracker = start_tracking(grouped, f"{cv_name}-summary", wandb_dir(storage_path, cv_name), job_type="cv")
    if not tracker.enabled:
        return
    import wandb

    tracker.log({"folds": wandb.Table(dataframe=table.astype(str))})
    stats = table.set_index("fold").loc[["mean", "std"]]
    tracker.summary({f"cv/{m}_{k}": float(stats.loc[k, m]) for m in METRICS if m in stats for k in ("mean", "std")})
    tracker.finish()


def cross_validate(cfg: Config, name: str, folds: list[dict[str, EncodedSplit]], resume: bool = False) -> pd.DataFrame:
    """Run (or resume) the K folds (from :func:`cut_folds`) on the current Ray; write, track,
    print and return the table.

    Raises:
        ConfigError: a cluster too small for one fold, or nothing to resume.
    """
    storage_path = layout.storage_root(cfg)
    cv_dir = storage.join(storage.filesystem(storage_path)[1], name)
    concurrency(cfg, ray.cluster_resources())
    grid = build_tuner(cfg, [ray.put(fold) for fold in folds], name, storage_path, resume).fit()
    table = cv_table(cfg, grid)
    line = summary_line(cfg, table)
    write_results(table, cv_dir, storage_path, names=CV_RESULTS_FILES, md_footer=f"\n{line}\n")
    track_cv(cfg, name, storage_path, table)
    print(f"\ncross-validation {name}: {cfg.data.cv_folds} folds")
    print(table.to_markdown(index=False))
    print(f"\n{line}")
    print(f"results: {storage.location_of(storage_path, storage.join(cv_dir, CV_RESULTS_FILES[1]))}")
    return table


class CvCommand(TrainingCommand):
    """``tune.cv``'s options: the training config, the number of folds, and resuming."""

    folds: int = Field(description="Number of folds K (>= 2).")
    name: str | None = Field(None, description="The folder: the same as run.name=NAME (default cv-<timestamp>); --resume needs it.")
    resume: bool = Field(False, description="Continue the cross-validation --name, rerunning failed folds.")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """CLI: validate, start or join Ray, cross-validate (or resume), print the table.

    Exits 1 when a fold failed (``--resume`` reruns it).
    """
    args = parse_command(CvCommand, argv, prog="python -m tune.cv", description=__doc__.split("\n")[0])
    if args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    cfg = load_config(args.config, [*args.overrides, *([f"run.name={args.name}"] if args.name else []), f"data.cv_folds={args.folds}"])
    if args.resume and not cfg.run.name:
        raise ConfigError("--resume needs --name or run.name (the cross-validation folder to continue)")
    check_against_model(cfg)
    check_storage(cfg)
    folds = cut_folds(cfg)
    init_ray()
    check_storage_from_every_node(cfg)
    table = cross_validate(cfg, output_name(cfg, "cv"), folds, resume=args.resume)
    if (table["status"].isin(["errored", "no result"])).any():
        sys.exit(1)
    return table


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
