"""Evaluate a checkpoint on a whole split: Ray Data batch inference, metrics, report, W&B.

    python -m ray_jobs.evaluate --checkpoint <path|best> [--split test] [--data DIR] [--calibrate]
    ray job submit --working-dir . -- python -m ray_jobs.evaluate --checkpoint best

The split is rebuilt from the checkpoint's own data config (same cleaning, same seeded
validation split), from ``--data`` or ``$IMDB_DATA_DIR`` when given. Writes, into
``<epoch checkpoint>/eval_<split>/`` unless ``--output-dir`` says otherwise (refused if it exists,
unless ``--overwrite``; it appears only when complete):

    metrics.json          every number in the report
    predictions.parquet   text, label, prediction, confidence, probabilities, length, truncation, windows
    report.html           self-contained report (images embedded) and the PNGs beside it

``--calibrate`` fits a softmax temperature on the validation split and saves it with the
checkpoint (``calibration.json``): later predictions (``ray_jobs.predict``, Serve) use it.
With chunked scoring (``--long-reviews chunks``, or the checkpoint's ``data.long_reviews``) the
reviews longer than the model's length are scored both ways in the same pass, and the report's
accuracy-by-length plot and ``metrics.json`` (``truncated_scoring``) show truncated next to chunked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from ray_jobs.batch_inference import (
    cluster_has_gpus,
    default_workers,
    logit_column,
    probability_column,
    quiet_ray_data,
    score_texts,
)
from ray_jobs.local_ray import init_ray
from ray_jobs.tracking import Tracker, start_tracking
from sentiment import layout, storage
from sentiment.backends import choose_backend
from sentiment.cli import parse_command
from sentiment.config import Config, ConfigError
from sentiment.data import DataError, load_splits
from sentiment.evaluation import confident_mistakes, evaluate_multi_label, evaluate_predictions, fit_temperature, headline
from sentiment.layout import (
    CALIBRATION_FILE,
    EVAL_METRICS_FILE,
    EVAL_PREDICTIONS_FILE,
    CheckpointError,
    ResolvedModel,
    eval_dir_name,
    run_and_epoch,
    run_history,
)
from sentiment.metrics import softmax
from sentiment.predict import Predictor
from sentiment.report import SCENARIOS, TITLES, Example, write_report


class EvaluateConfig(BaseModel):
    """What ``ray_jobs.evaluate`` does: one typed, validated object (the CLI only fills it in)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="Model folder, epoch checkpoint, run folder, 'best' or a URI.")
    which: Literal["best", "last"] = Field("best", description="Epoch of a run folder.")
    storage_path: str | None = Field(None, description="Where 'best' is looked up (default: run.storage_path's).")
    split: Literal["test", "validation"] = Field("test", description="The split scored.")
    data: str | None = Field(None, description="Data folder or file (default: the checkpoint's data config).")
    max_samples: int | None = Field(None, ge=1, description="Evaluate a stratified sample of this many reviews.")
    output_dir: str | None = Field(None, description="Default: <epoch checkpoint>/eval_<split>.")
    overwrite: bool = Field(False, description="Replace an existing output folder.")
    calibrate: bool = Field(False, description="Fit a temperature on the validation split and save it.")
    attribution_samples: int = Field(200, ge=0, description="Reviews for word attributions (0: off).")
    ig_steps: int = Field(16, ge=1, description="Integrated-gradients steps per review.")
    mistakes: int = Field(10, ge=0, description="Most confident mistakes shown.")
    workers: int | None = Field(None, ge=1, description="Model actors (default: one per GPU, else per CPU).")
    batch_size: int = Field(64, ge=1, description="Reviews per forward pass.")
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="Backend that scores the split; auto: torch bf16 on GPUs, on CPUs the verified int8 export, "
        "else fp32 ONNX, else torch.")
    wandb: Literal["auto", "online", "offline", "disabled"] | None = Field(
        None, description="Default: the checkpoint's tracking.mode."
    )
    long_reviews: Literal["truncate", "chunks"] | None = Field(
        None, description="Default: the checkpoint's data.long_reviews; chunks scores whole reviews and reports both ways."
    )


def parse_args(argv: list[str] | None) -> EvaluateConfig:
    """Command-line arguments as an :class:`EvaluateConfig` (its fields are the options)."""
    return parse_command(EvaluateConfig, argv, prog="python -m ray_jobs.evaluate", description=__doc__.split("\n")[0])


def default_output_dir(model: ResolvedModel, split: str) -> str:
    """``<epoch checkpoint>/eval_<split>``, beside the model folder (local path or URI)."""
    return storage.child(model.epoch_dir or model.location, eval_dir_name(split))


def check_output_dir(out: str, overwrite: bool) -> None:
    """Refuse an existing report folder unless ``overwrite``.

    Raises:
        ConfigError: naming the folder.
    """
    fs, path = storage.filesystem(out)
    if storage.exists(fs, path) and not overwrite:
        raise ConfigError(f"output folder {out!r} exists; pass --overwrite to replace it")


def load_split(cfg: Config, args: EvaluateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluated split and the validation split, rebuilt with the checkpoint's data config."""
    update: dict[str, Any] = {"max_train_samples": None}
    if args.data:
        update.update(path=args.data, source="auto")
    if args.max_samples:
        update.update(max_test_samples=args.max_samples, max_val_samples=args.max_samples)
    splits = load_splits(cfg.data.model_copy(update=update), cfg.model.label_names, cfg.model.multi_label)
    return splits[args.split].to_pandas(), splits["validation"].to_pandas()


def label_array(split: pd.DataFrame) -> np.ndarray:
    """The split's labels: ``(n,)`` class ids, or a multi-label split's ``(n, k)`` multi-hot rows."""
    column = split["label"]
    return np.stack(column.to_numpy()).astype(np.int64) if len(column) and np.ndim(column.iloc[0]) else column.to_numpy()


def save_temperature(model: ResolvedModel, temperature: float, n: int) -> ResolvedModel:
    """Store the fitted temperature with the model folder (replacing an earlier one atomically);
    returns ``model`` expecting the new file's sha256 (what later loads verify)."""
    fs, path = storage.filesystem(model.location)
    file = storage.join(path, CALIBRATION_FILE)
    storage.write_json(fs, file, {
        "temperature": temperature, "fitted_on": "validation", "reviews": n,
        "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return dataclasses.replace(model, calibration_sha256=storage.file_sha256(fs, file))


def scenario_examples(predictor: Predictor) -> list[Example]:
    """The seed's three reviews with what the model says (a multi-label model: the labels it gives,
    expected none of them, and its most probable label's probability)."""
    texts = [t for t, _ in SCENARIOS]
    return [Example(text, "" if predictor.multi_label else expected, joined(p.labels) if predictor.multi_label else p.label, p.score)
            for (text, expected), p in zip(SCENARIOS, predictor.predict_details(texts))]


def joined(names: list[str] | None) -> str:
    """A multi-label text's labels as one cell, ``plot, acting`` (``(none)`` for none)."""
    return ", ".join(names or []) or "(none)"


def attribution_target(label_names: list[str]) -> int:
    """The class word attributions point toward: ``positive`` if there is one, else the last."""
    return label_names.index("positive") if "positive" in label_names else len(label_names) - 1


def log_to_wandb(tracker: Tracker, metrics: dict[str, Any], plots: dict[str, Path], table: pd.DataFrame,
                 label_names: list[str], link: dict[str, str]) -> None:
    """Metrics, each plot as an image, W&B's confusion matrix, the predictions table and the
    checkpoint the numbers belong to."""
    if not tracker.enabled:
        return
    import wandb

    tracker.summary(headline(metrics) | link)
    images = {f"eval/{name}": wandb.Image(str(path), caption=TITLES[name]) for name, path in plots.items() if name in TITLES}
    logged = images | {"eval/predictions": wandb.Table(dataframe=table[["text", "label", "predicted", "confidence"]])}
    if "micro_f1" not in metrics:  # a single-label model's confusion matrix (a multi-label one's per label is a plot)
        truth = [label_names.index(x) for x in table["label"]]
        preds = [label_names.index(x) for x in table["predicted"]]
        logged["eval/confusion_matrix_plot"] = wandb.plot.confusion_matrix(y_true=truth, preds=preds, class_names=label_names)
    tracker.log(logged)
    artifact = wandb.Artifact(f"evaluated-{link['checkpoint_artifact'].replace(':', '-')}", type="evaluation", metadata=link)
    artifact.add_reference(link["checkpoint_uri"], checksum=False)
    tracker.run.log_artifact(artifact)


def calibrate(
    validation: pd.DataFrame, model: ResolvedModel, workers: int, use_gpu: bool, batch_size: int, backend: str, long_reviews: str
) -> tuple[float, ResolvedModel]:
    """Fit a temperature on the validation split (scored by ``backend``, long reviews as ``long_reviews``
    says) and save it with the model folder; returns it and ``model`` expecting the new calibration file."""
    names = model.config.model.label_names
    if model.config.model.multi_label:
        raise ConfigError("--calibrate fits a softmax temperature: a multi-label model has one sigmoid per label, whose "
                          "decision thresholds training tuned on the validation split; evaluate it without --calibrate")
    scores, _ = score_texts(validation["text"].tolist(), model, workers, use_gpu, batch_size, "calibrate", backend,
                            long_reviews=long_reviews)
    temperature = fit_temperature(scores[[logit_column(n) for n in names]].to_numpy(), validation["label"].to_numpy())
    model = save_temperature(model, temperature, len(validation))
    print(f"evaluate: temperature {temperature:.4f} fitted on {len(validation)} validation reviews, saved with the checkpoint")
    return temperature, model


def predictions_table(split: pd.DataFrame, scores: pd.DataFrame, predictor: Predictor, temperature: float | None) -> pd.DataFrame:
    """One row per review: text, label, prediction, confidence, probabilities (temperature-scaled
    when there is one), tokens and truncation. A multi-label model's label and prediction cells list
    the labels (:func:`joined`), and its confidence is that of its least sure label decision."""
    names = predictor.label_names
    logits = scores[[logit_column(n) for n in names]].to_numpy(np.float64)
    if predictor.multi_label:
        proba = predictor.probabilities(logits)
        truth = [joined([n for n, on in zip(names, row) if on]) for row in label_array(split)]
        decided, confidence = [joined(d) for d in predictor.decide(proba)], np.maximum(proba, 1 - proba).min(1)
    else:
        proba = softmax(logits / (temperature or 1.0))
        truth, decided, confidence = [names[i] for i in split["label"]], [names[i] for i in proba.argmax(1)], proba.max(1)
    return pd.DataFrame({
        "text": split["text"], "label": truth, "predicted": decided,
        "confidence": confidence, **{probability_column(n): proba[:, i] for i, n in enumerate(names)},
        "num_tokens": scores["num_tokens"], "truncated": scores["truncated"], "windows": scores["windows"],
    })


def decision_views(proba: np.ndarray, labels: np.ndarray, predictor: Predictor) -> dict[str, np.ndarray]:
    """What the report plots: each decision's ``confidence`` and whether it is ``correct`` (a review's
    class; a multi-label model's every text-label decision), and the reviews with a wrong decision,
    the most confident first (``mistakes``)."""
    if not predictor.multi_label:
        return {"confidence": proba.max(1), "correct": proba.argmax(1) == labels,
                "mistakes": confident_mistakes(proba, labels, len(labels))}
    decided = proba > predictor.thresholds[None, :]
    sure = np.maximum(proba, 1 - proba)
    worst = np.where(decided != labels, sure, -1.0).max(axis=1)  # the most confident wrong decision of each text
    wrong = np.flatnonzero(worst >= 0)
    return {"confidence": sure.reshape(-1), "correct": (decided == labels).reshape(-1),
            "mistakes": wrong[np.argsort(-worst[wrong], kind="stable")]}


def word_scores(predictor: Predictor, texts: pd.Series, samples: int, steps: int) -> dict[str, Any] | None:
    """Integrated-gradients word scores over a seeded sample of ``texts`` (None when ``samples`` is 0)."""
    if not samples:
        return None
    from sentiment.attribution import top_words

    sample = texts.sample(min(samples, len(texts)), random_state=0).tolist()
    print(f"evaluate: integrated gradients on {len(sample)} reviews ({steps} steps)", flush=True)
    return top_words(predictor, sample, attribution_target(predictor.label_names), n_steps=steps)


def checkpoint_link(model: ResolvedModel) -> dict[str, str]:
    """Where the evaluated weights are: URI, sha256, and the training run's W&B artifact name."""
    run_name, epoch = run_and_epoch(model.epoch_dir or model.location)
    return {"checkpoint_uri": model.location if model.is_remote else Path(model.location).as_uri(),
            "checkpoint_artifact": f"model-{run_name}:epoch-{epoch}", "checkpoint_sha256": model.sha256, "run": run_name}


def with_tracking_mode(cfg: Config, mode: str | None) -> Config:
    """``cfg`` with ``tracking.mode`` replaced when ``mode`` is given."""
    if mode is None:
        return cfg
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": mode})})


def saved_temperature(predictor: Predictor) -> float | None:
    """The temperature saved with the checkpoint, or None when it has none."""
    return predictor.temperature if (Path(predictor.path) / CALIBRATION_FILE).is_file() else None


def run(args: EvaluateConfig) -> dict[str, Any]:
    """Check the inputs, score the split, compute metrics, write the report; returns the metrics.

    Raises:
        CheckpointError: a missing, incomplete or corrupt checkpoint.
        ConfigError: an output folder that exists without ``overwrite``.
        DataError: the split cannot be rebuilt from the data.
    """
    model = layout.resolve(args.checkpoint, args.which, args.storage_path)
    out = args.output_dir or default_output_dir(model, args.split)
    check_output_dir(out, args.overwrite)
    cfg = with_tracking_mode(model.config, args.wandb)
    split, validation = load_split(cfg, args)
    init_ray()
    quiet_ray_data()
    use_gpu = cluster_has_gpus()
    workers = args.workers or default_workers(use_gpu)
    backend = choose_backend(args.backend, model, "cuda" if use_gpu else "cpu")
    long_reviews = args.long_reviews or cfg.data.long_reviews
    print(f"evaluate: {len(split)} {args.split} reviews, {model.location} ({backend}, long reviews: {long_reviews}), "
          f"{workers} {'GPU' if use_gpu else 'CPU'} worker(s)", flush=True)
    # in-process: the seed's examples and the word attributions, whose gradients want fp32 weights
    predictor = Predictor.load(model, dtype=torch.float32, long_reviews=long_reviews)
    try:
        temperature = saved_temperature(predictor)
        if args.calibrate:
            temperature, model = calibrate(validation, model, workers, use_gpu, args.batch_size, backend, long_reviews)
        scores, rate = score_texts(split["text"].tolist(), model, workers, use_gpu, args.batch_size, "evaluate", backend,
                                   long_reviews=long_reviews, compare=long_reviews == "chunks")
        meta = {"workers": workers, "device": "GPU" if use_gpu else "CPU", "backend": backend, "reviews_per_s": rate,
                "long_reviews": long_reviews}
        metrics = write_evaluation(args, model, cfg, predictor, split, scores, temperature, meta, out)
    finally:
        predictor.close()
    micro = f", micro F1 {metrics['micro_f1']:.4f}, Hamming loss {metrics['hamming_loss']:.4f}" if "micro_f1" in metrics else ""
    accuracy = "subset accuracy" if "micro_f1" in metrics else "accuracy"
    print(f"evaluate: {accuracy} {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}{micro}, ROC AUC {metrics['roc_auc']:.4f}, "
          f"ECE {metrics['ece']:.4f}; report: {storage.child(out, 'report.html')}", flush=True)
    return metrics


def write_evaluation(
    args: EvaluateConfig, model: ResolvedModel, cfg: Config, predictor: Predictor, split: pd.DataFrame,
    scores: pd.DataFrame, temperature: float | None, meta: dict[str, Any], out: str,
) -> dict[str, Any]:
    """Metrics, predictions, report and W&B run from the scores; published to ``out`` when complete."""
    names = cfg.model.label_names
    labels = label_array(split)
    num_tokens = scores["num_tokens"].to_numpy()
    plain = [logit_column(n, truncated=True) for n in names]
    logits = scores[[logit_column(n) for n in names]].to_numpy(np.float64)
    truncated = scores[plain].to_numpy(np.float64) if plain[0] in scores else None
    if predictor.multi_label:
        metrics = evaluate_multi_label(logits, labels, names, predictor.thresholds.tolist(), num_tokens,
                                       num_tokens > cfg.data.max_seq_length, truncated)
    else:
        metrics = evaluate_predictions(logits, labels, names, num_tokens, num_tokens > cfg.data.max_seq_length, temperature,
                                       truncated)
    table = predictions_table(split, scores, predictor, temperature)
    proba = table[[probability_column(n) for n in names]].to_numpy()
    words = word_scores(predictor, split["text"], args.attribution_samples, args.ig_steps)
    views = decision_views(proba, labels, predictor)
    mistakes = [Example(table.text[i], table.label[i], table.predicted[i], float(table.confidence[i]))
                for i in views["mistakes"][:args.mistakes]]
    link = checkpoint_link(model)
    meta = {
        "checkpoint": model.location, "run": link["run"], "split": args.split, "model": cfg.model.name_or_path,
        "max_seq_length": cfg.data.max_seq_length, "truncation": cfg.data.truncation, **meta,
        "sha256": model.sha256, "attribution_target": names[attribution_target(names)], "attribution_min_count": 3,
        "attribution_reviews": min(args.attribution_samples, len(split)),
    }
    with storage.publish_dir(out) as folder:
        plots = write_report(folder, metrics, names, run_history(model.epoch_dir) if model.epoch_dir else [],
                             {k: views[k] for k in ("confidence", "correct")}, scenario_examples(predictor), mistakes, words, meta)
        storage.write_local_json(folder / EVAL_METRICS_FILE, metrics | {"meta": meta})
        table.to_parquet(folder / EVAL_PREDICTIONS_FILE, index=False)
        tracker = start_tracking(cfg, f"eval-{link['run']}-{args.split}-{dt.datetime.now():%Y%m%d-%H%M%S}",
                                 str(folder / "wandb"), job_type="eval")
        try:
            log_to_wandb(tracker, metrics, plots, table, names, link)
        finally:
            tracker.finish()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: parse the arguments into an :class:`EvaluateConfig` and :func:`run` it."""
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ConfigError, DataError) as err:  # bad input: one line naming it, exit 2
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
