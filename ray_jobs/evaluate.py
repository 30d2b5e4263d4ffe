"""Evaluate a checkpoint on a whole split: Ray Data batch inference, metrics, report, W&B.

    python -m ray_jobs.evaluate --checkpoint <path|best> [--split test] [--data DIR] [--calibrate]
    ray job submit --working-dir . -- python -m ray_jobs.evaluate --checkpoint best

The split is rebuilt from the checkpoint's own data config (same cleaning, same seeded
validation split), from ``--data`` or ``$IMDB_DATA_DIR`` when given. Writes, into
``<epoch checkpoint>/eval_<split>/`` unless ``--output-dir`` says otherwise (refused if it exists,
unless ``--overwrite``; it appears only when complete):

    metrics.json          every number in the report
    predictions.parquet   text, label, prediction, confidence, probabilities, length, truncation
    report.html           self-contained report (images embedded) and the PNGs beside it

``--calibrate`` fits a softmax temperature on the validation split and saves it with the
checkpoint (``calibration.json``): later predictions (``ray_jobs.predict``, Serve) use it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from ray_jobs import storage
from ray_jobs.batch_inference import (
    cluster_has_gpus, default_workers, logit_column, probability_column, quiet_ray_data, score_texts,
)
from ray_jobs.checkpoints import local_model_dir, resolve_checkpoint, sha256_file
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import Tracker, start_tracking
from sentiment.checkpoint import (
    CALIBRATION_FILE,
    MODEL_DIR,
    RESULT_FILE,
    STATE_FILE,
    CheckpointError,
    atomic_dir,
    read_model_dir,
    read_temperature,
    write_json,
)
from sentiment.config import Config, ConfigError
from sentiment.data import DataError, load_splits
from sentiment.evaluation import confident_mistakes, evaluate_predictions, fit_temperature, headline
from sentiment.metrics import softmax
from sentiment.predict import Predictor
from sentiment.report import SCENARIOS, TITLES, Example, write_report

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="model folder, epoch checkpoint, run folder, 'best' or a URI")
    ap.add_argument("--which", choices=("best", "last"), default="best", help="epoch of a run folder")
    ap.add_argument("--storage-path", default=None, help="where 'best' is looked up (default: run.storage_path's)")
    ap.add_argument("--split", choices=("test", "validation"), default="test")
    ap.add_argument("--data", default=None, help="data folder or file (default: the checkpoint's data config)")
    ap.add_argument("--max-samples", type=int, default=None, help="evaluate a stratified sample of this many reviews")
    ap.add_argument("--output-dir", default=None, help="default: <epoch checkpoint>/eval_<split>")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--calibrate", action="store_true", help="fit a temperature on the validation split and save it")
    ap.add_argument("--attribution-samples", type=int, default=200, help="reviews for word attributions (0: off)")
    ap.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps per review")
    ap.add_argument("--mistakes", type=int, default=10, help="most confident mistakes shown")
    ap.add_argument("--workers", type=int, default=None, help="model actors (default: one per GPU, else per CPU)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default=None,
                    help="default: the checkpoint's tracking.mode")
    args = ap.parse_args(argv)
    for name in ("max_samples", "workers", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def epoch_dir_of(model_dir: str) -> str:
    """The epoch checkpoint holding a model folder (the folder itself when it stands alone)."""
    return model_dir.rsplit("/", 1)[0] if model_dir.rstrip("/").endswith("/" + MODEL_DIR) else model_dir


def training_history(epoch_dir: str) -> list[dict[str, float]]:
    """Per-epoch metrics of the run that wrote the checkpoint: from its last epoch when the run
    folder names one (``result.json``), else from the checkpoint's own epoch; empty if neither."""
    fs, path = storage.resolve(epoch_dir)
    run_dir = path.rsplit("/", 1)[0]
    candidates = [path]
    if fs.get_file_info(storage.join(run_dir, RESULT_FILE)).type.name == "File":
        last = storage.read_json(fs, storage.join(run_dir, RESULT_FILE)).get("last_checkpoint")
        if last:
            candidates.insert(0, storage.resolve(last)[1])
    for candidate in candidates:
        state = storage.join(candidate, STATE_FILE)
        if fs.get_file_info(state).type.name == "File":
            return storage.read_json(fs, state).get("history", [])
    return []


def default_output_dir(model_dir: str, split: str) -> str:
    """``<epoch checkpoint>/eval_<split>``, beside the model folder (local path or URI)."""
    return storage.join(epoch_dir_of(model_dir), f"eval_{split}")


def check_output_dir(out: str, overwrite: bool) -> None:
    """Refuse an existing report folder unless ``overwrite``.

    Raises:
        ConfigError: naming the folder.
    """
    fs, path = storage.resolve(out)
    if fs.get_file_info(path).type.name != "NotFound" and not overwrite:
        raise ConfigError(f"output folder {out!r} exists; pass --overwrite to replace it")


def load_split(cfg: Config, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluated split and the validation split, rebuilt with the checkpoint's data config."""
    update: dict[str, Any] = {"max_train_samples": None}
    if args.data:
        update.update(path=args.data, source="auto")
    if args.max_samples:
        update.update(max_test_samples=args.max_samples, max_val_samples=args.max_samples)
    splits = load_splits(cfg.data.model_copy(update=update), cfg.model.label_names)
    return splits[args.split].to_pandas(), splits["validation"].to_pandas()


def save_temperature(model_dir: str, temperature: float, n: int) -> None:
    """Store the fitted temperature with the model folder (replacing an earlier one atomically)."""
    fs, path = storage.resolve(model_dir)
    storage.write_json(fs, storage.join(path, CALIBRATION_FILE), {
        "temperature": temperature, "fitted_on": "validation", "reviews": n,
        "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


def scenario_examples(predictor: Predictor) -> list[Example]:
    """The seed's three reviews with what the model says."""
    texts = [t for t, _ in SCENARIOS]
    return [Example(text, expected, p.label, p.score)
            for (text, expected), p in zip(SCENARIOS, predictor.predict_details(texts))]


def attribution_target(label_names: list[str]) -> int:
    """The class word attributions point toward: ``positive`` if there is one, else the last."""
    return label_names.index("positive") if "positive" in label_names else len(label_names) - 1


def log_to_wandb(tracker: Tracker, metrics: dict[str, Any], plots: dict[str, Path], table: pd.DataFrame, label_names: list[str], link: dict[str, str]) -> None:
    """Metrics, each plot as an image, W&B's confusion matrix, the predictions table and the
    checkpoint the numbers belong to."""
    if not tracker.enabled:
        return
    import wandb

    tracker.summary(headline(metrics) | link)
    images = {f"eval/{name}": wandb.Image(str(path), caption=TITLES[name]) for name, path in plots.items() if name in TITLES}
    truth = [label_names.index(x) for x in table["label"]]
    preds = [label_names.index(x) for x in table["predicted"]]
    tracker.log(images | {
        "eval/confusion_matrix_plot": wandb.plot.confusion_matrix(y_true=truth, preds=preds, class_names=label_names),
        "eval/predictions": wandb.Table(dataframe=table[["text", "label", "predicted", "confidence"]]),
    })
    artifact = wandb.Artifact(f"evaluated-{link['checkpoint_artifact'].replace(':', '-')}", type="evaluation", metadata=link)
    artifact.add_reference(link["checkpoint_uri"], checksum=False)
    tracker.run.log_artifact(artifact)


def calibrate(validation: pd.DataFrame, model_dir: str, names: list[str], workers: int, use_gpu: bool, batch_size: int) -> float:
    """Fit a temperature on the validation split and save it with the model folder."""
    scores, _ = score_texts(validation["text"].tolist(), model_dir, workers, use_gpu, batch_size, "calibrate")
    temperature = fit_temperature(scores[[logit_column(n) for n in names]].to_numpy(), validation["label"].to_numpy())
    save_temperature(model_dir, temperature, len(validation))
    print(f"evaluate: temperature {temperature:.4f} fitted on {len(validation)} validation reviews, saved with the checkpoint")
    return temperature


def predictions_table(split: pd.DataFrame, scores: pd.DataFrame, names: list[str], temperature: float | None) -> pd.DataFrame:
    """One row per review: text, label, prediction, confidence, probabilities (temperature-scaled
    when there is one), tokens and truncation."""
    proba = softmax(scores[[logit_column(n) for n in names]].to_numpy(np.float64) / (temperature or 1.0))
    return pd.DataFrame({
        "text": split["text"], "label": [names[i] for i in split["label"]], "predicted": [names[i] for i in proba.argmax(1)],
        "confidence": proba.max(1), **{probability_column(n): proba[:, i] for i, n in enumerate(names)},
        "num_tokens": scores["num_tokens"], "truncated": scores["truncated"],
    })


def word_scores(predictor: Predictor, texts: pd.Series, samples: int, steps: int) -> dict[str, Any] | None:
    """Integrated-gradients word scores over a seeded sample of ``texts`` (None when ``samples`` is 0)."""
    if not samples:
        return None
    from sentiment.attribution import top_words

    sample = texts.sample(min(samples, len(texts)), random_state=0).tolist()
    print(f"evaluate: integrated gradients on {len(sample)} reviews ({steps} steps)", flush=True)
    return top_words(predictor, sample, attribution_target(predictor.label_names), n_steps=steps)


def checkpoint_link(model_dir: str, sha: str) -> dict[str, str]:
    """Where the evaluated weights are: URI, sha256, and the training run's W&B artifact name."""
    epoch_dir = epoch_dir_of(model_dir).rstrip("/")
    run_name = epoch_dir.split("/")[-2] if "/" in epoch_dir else epoch_dir
    epoch = epoch_dir.rsplit("_", 1)[-1].lstrip("0") or "0"
    return {"checkpoint_uri": model_dir if "://" in model_dir else Path(model_dir).resolve().as_uri(),
            "checkpoint_artifact": f"model-{run_name}:epoch-{epoch}", "checkpoint_sha256": sha, "run": run_name}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check the inputs, score the split, compute metrics, write the report; returns the metrics."""
    model_dir = resolve_checkpoint(args.checkpoint, args.which, args.storage_path)
    out = args.output_dir or default_output_dir(model_dir, args.split)
    check_output_dir(out, args.overwrite)
    local = local_model_dir(model_dir)
    cfg, _ = read_model_dir(local)
    if args.wandb:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": args.wandb})})
    names = cfg.model.label_names
    split, validation = load_split(cfg, args)
    init_ray()
    quiet_ray_data()
    use_gpu = cluster_has_gpus()
    workers = args.workers or default_workers(use_gpu)
    print(f"evaluate: {len(split)} {args.split} reviews, {model_dir}, {workers} {'GPU' if use_gpu else 'CPU'} worker(s)", flush=True)

    temperature = read_temperature(local) if (Path(local) / CALIBRATION_FILE).is_file() else None
    if args.calibrate:
        temperature = calibrate(validation, model_dir, names, workers, use_gpu, args.batch_size)
    scores, rate = score_texts(split["text"].tolist(), model_dir, workers, use_gpu, args.batch_size, "evaluate")
    labels = split["label"].to_numpy()
    metrics = evaluate_predictions(scores[[logit_column(n) for n in names]].to_numpy(np.float64), labels, names,
                                   scores["num_tokens"].to_numpy(), scores["truncated"].to_numpy(), temperature)
    table = predictions_table(split, scores, names, temperature)
    proba = table[[probability_column(n) for n in names]].to_numpy()

    predictor = Predictor.load(local)  # in-process: the seed's examples and the word attributions
    words = word_scores(predictor, split["text"], args.attribution_samples, args.ig_steps)
    mistakes = [Example(table.text[i], table.label[i], table.predicted[i], float(table.confidence[i]))
                for i in confident_mistakes(proba, labels, args.mistakes)]
    link = checkpoint_link(model_dir, sha256_file(Path(local) / "model.safetensors"))
    meta = {
        "checkpoint": model_dir, "run": link["run"], "split": args.split, "model": cfg.model.name_or_path,
        "max_seq_length": cfg.data.max_seq_length, "truncation": cfg.data.truncation, "workers": workers,
        "device": "GPU" if use_gpu else "CPU", "reviews_per_s": rate, "sha256": link["checkpoint_sha256"],
        "attribution_target": names[attribution_target(names)], "attribution_min_count": 3,
        "attribution_reviews": min(args.attribution_samples, len(split)),
    }

    def build(folder: Path) -> None:
        plots = write_report(folder, metrics, names, training_history(epoch_dir_of(model_dir)), {
            "confidence": proba.max(1), "correct": proba.argmax(1) == labels,
        }, scenario_examples(predictor), mistakes, words, meta)
        write_json(folder / METRICS_FILE, metrics | {"meta": meta})
        table.to_parquet(folder / PREDICTIONS_FILE, index=False)
        tracker = start_tracking(cfg, f"eval-{link['run']}-{args.split}-{dt.datetime.now():%Y%m%d-%H%M%S}",
                                 str(folder / "wandb"), job_type="eval")
        try:
            log_to_wandb(tracker, metrics, plots, table, names, link)
        finally:
            tracker.finish()

    publish(out, build)
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}, ROC AUC {metrics['roc_auc']:.4f}, "
          f"ECE {metrics['ece']:.4f}; report: {storage.join(out, 'report.html')}", flush=True)
    return metrics


def publish(out: str, build: Callable[[Path], None]) -> None:
    """Run ``build`` on an empty folder that becomes ``out`` only when it is complete: renamed into
    place for a local path, uploaded for a URI."""
    if "://" not in out:
        with atomic_dir(out) as tmp:
            build(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="sentiment-eval-") as tmp:
        build(Path(tmp))
        fs, path = storage.resolve(out)
        pafs.copy_files(tmp, path, destination_filesystem=fs)


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input exits 2 with one line naming what was wrong."""
    args = parse_args(argv)
    try:
        run(args)
    except (CheckpointError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
