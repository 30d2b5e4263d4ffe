"""Batch prediction: score a file of reviews with a checkpoint, on Ray Data.

    python -m ray_jobs.predict --checkpoint best --input reviews.csv --output predictions.parquet
    ray job submit --working-dir . -- python -m ray_jobs.predict --checkpoint s3://bucket/runs/r1 ...

Input: ``.parquet``, ``.csv`` or ``.jsonl`` with a text column (``--text-column``, default
``text``). Output (``.parquet``, ``.csv`` or ``.jsonl``): every input column, in input order, plus
``predicted_label``, ``score``, ``prob_<label>`` (temperature-scaled if the checkpoint has one; a multi-label
model's are one sigmoid per label, and ``predicted_labels`` lists the labels above their thresholds: a
JSON list in CSV),
``logit_<label>``, ``num_tokens`` (the review's full length), ``truncated`` and ``windows`` (how
many windows of the review were scored: more than one with ``--long-reviews chunks``); with ``--explain``
also ``key_tokens``, each review's top words toward its predicted label as JSON
(``[{"word": ..., "score": ...}]``, integrated gradients: ``--explain-steps`` forward and backward
passes per review, on the torch backend). Empty or missing
texts are not scored: their rows stay, with empty prediction columns, and are counted. An
existing output is refused without ``--overwrite``; the output appears only when complete.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ray_jobs.batch_inference import PREDICTED, cluster_has_gpus, default_workers, quiet_ray_data, score_texts
from ray_jobs.local_ray import init_ray
from sentiment import layout
from sentiment.backends import choose_backend
from sentiment.cli import parse_command
from sentiment.layout import CheckpointError

FORMATS = (".parquet", ".csv", ".jsonl")


class InputError(ValueError):
    """An input or output file that cannot be used; the message says which and why."""


class PredictConfig(BaseModel):
    """What ``ray_jobs.predict`` does: one typed, validated object (the CLI only fills it in)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="Model folder, epoch checkpoint, run folder, 'best' or a URI.")
    input: str = Field(description="Reviews: .parquet, .csv or .jsonl.")
    output: str = Field(description="Predictions: .parquet, .csv or .jsonl.")
    which: Literal["best", "last"] = Field("best", description="Epoch of a run folder.")
    storage_path: str | None = Field(None, description="Where 'best' is looked up (default: run.storage_path's).")
    text_column: str = Field("text", description="The input's column of review texts.")
    overwrite: bool = Field(False, description="Replace an existing output.")
    workers: int | None = Field(None, ge=1, description="Model actors (default: one per GPU, else per CPU).")
    batch_size: int = Field(64, ge=1, description="Reviews per forward pass.")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="Where the actors run (auto: GPUs when the cluster has them).")
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="Inference backend of the actors; auto: torch bf16 on GPUs, on CPUs the verified int8 export, "
        "else fp32 ONNX, else torch.")
    explain: bool = Field(False, description="Add key_tokens per review (torch backend; auto picks torch).")
    explain_steps: int = Field(16, ge=2, le=256, description="Integrated-gradients steps per explained review.")
    explain_top_k: int = Field(5, ge=1, le=50, description="Key tokens per review.")
    long_reviews: Literal["truncate", "chunks"] | None = Field(
        None, description="Override the checkpoint's data.long_reviews (chunks: score whole long reviews)."
    )


def file_format(path: str, role: str) -> str:
    """The format of ``path`` from its extension.

    Raises:
        InputError: an extension other than .parquet, .csv or .jsonl.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{role} {path!r}: unknown format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}")
    return suffix


def read_table(path: str, text_column: str) -> pd.DataFrame:
    """Read the input file and check its text column.

    Raises:
        InputError: missing or unreadable file, or no ``text_column`` (the columns are listed).
    """
    fmt = file_format(path, "input")
    if not Path(path).is_file():
        raise InputError(f"input {path!r} does not exist")
    try:
        readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True)}
        df = readers[fmt](path)
    except Exception as err:
        raise InputError(f"input {path!r} cannot be read as {fmt[1:]}: {err}") from None
    if text_column not in df.columns:
        raise InputError(f"input {path!r} has no column {text_column!r} (columns: {', '.join(map(str, df.columns))}); "
                         "choose one with --text-column")
    return df


def texts_to_score(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Which rows have a non-empty text, and those texts (non-strings are read as text)."""
    texts = column.where(column.notna(), "").astype(str)
    mask = texts.str.strip().ne("").to_numpy()
    return mask, texts[mask].tolist()


def with_predictions(df: pd.DataFrame, mask: np.ndarray, predictions: pd.DataFrame) -> pd.DataFrame:
    """The input table with the prediction columns added (empty where ``mask`` is False).

    Raises:
        InputError: the input already has a column of one of those names (it would be lost).
    """
    clash = [c for c in predictions.columns if c in df.columns]
    if clash:
        raise InputError(f"input already has column(s) {', '.join(clash)}, which the predictions would overwrite")
    predictions.index = np.flatnonzero(mask)
    return df.join(predictions)


def write_table(df: pd.DataFrame, path: str) -> None:
    """Write ``df`` to a temporary sibling, then move it into place (never a partial file)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dest.name}")
    try:
        fmt = file_format(path, "output")
        if fmt == ".parquet":
            df.to_parquet(tmp, index=False)
        elif fmt == ".csv":  # lists (a multi-label model's predicted_labels) as JSON, as data reads them
            df.apply(json_lists).to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def json_lists(column: pd.Series) -> pd.Series:
    """A column of lists (Ray Data hands them back as arrays) as JSON strings; any other column unchanged."""
    if not column.map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
        return column
    return column.map(lambda v: json.dumps(list(v)) if isinstance(v, list | tuple | np.ndarray) else v)


def check_output(path: str, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite``) or has an unknown format.

    Raises:
        InputError: naming the path.
    """
    file_format(path, "output")
    if Path(path).exists() and not overwrite:
        raise InputError(f"output {path!r} exists; pass --overwrite to replace it")


def parse_args(argv: list[str] | None) -> PredictConfig:
    """Command-line arguments as a :class:`PredictConfig` (its fields are the options)."""
    return parse_command(PredictConfig, argv, prog="python -m ray_jobs.predict", description=__doc__.split("\n")[0])


def resolve_device(device: str) -> bool:
    """``auto``: GPUs when the cluster has them. Returns whether to use GPUs.

    Raises:
        InputError: ``gpu`` asked for on a cluster without GPUs.
    """
    has = cluster_has_gpus()
    if device == "gpu" and not has:
        raise InputError("--device gpu, but the Ray cluster has no GPU")
    return has if device == "auto" else device == "gpu"


def run(args: PredictConfig) -> pd.DataFrame:
    """Check everything, score the non-empty rows, write the output; returns the written table.

    Raises:
        InputError: an unusable input or output file.
        CheckpointError: a missing, incomplete or corrupt checkpoint.
    """
    if args.explain and args.backend not in ("auto", "torch"):
        raise InputError(f"--explain needs gradients, which backend {args.backend!r} cannot give: use --backend torch")
    check_output(args.output, args.overwrite)
    df = read_table(args.input, args.text_column)
    model = layout.resolve(args.checkpoint, args.which, args.storage_path)
    mask, texts = texts_to_score(df[args.text_column])
    if not texts:
        raise InputError(f"input {args.input!r} has no non-empty text in column {args.text_column!r}")
    init_ray()
    quiet_ray_data()
    use_gpu = resolve_device(args.device)
    requested = "torch" if args.explain else args.backend  # gradients need torch
    backend = choose_backend(requested, model, "cuda" if use_gpu else "cpu")
    explain = {"top_k": args.explain_top_k, "n_steps": args.explain_steps} if args.explain else None
    workers = args.workers or default_workers(use_gpu)
    print(f"predict: {len(texts)} reviews from {args.input} with {model.location} ({backend}) on {workers} "
          f"{'GPU' if use_gpu else 'CPU'} worker(s)", flush=True)
    predictions, _ = score_texts(texts, model, workers, use_gpu, args.batch_size, backend=backend, explain=explain,
                                 long_reviews=args.long_reviews)
    out = with_predictions(df, mask, predictions)
    write_table(out, args.output)
    skipped = int((~mask).sum())
    counts = out[PREDICTED].value_counts().to_dict()
    print(f"predict: wrote {len(out)} rows to {args.output} ({counts}); "
          f"{skipped} empty text(s) skipped (prediction columns left empty)", flush=True)
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """CLI: parse the arguments into a :class:`PredictConfig` and :func:`run` it."""
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except (InputError, CheckpointError) as err:  # bad input: one line naming it, exit 2
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
