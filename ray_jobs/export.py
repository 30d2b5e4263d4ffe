"""Export a checkpoint to ONNX (fp32, fused) and int8, each verified before it is kept.

    python -m ray_jobs.export --checkpoint <any reference Serve takes> [--int8] [--data DIR]
    python -m ray_jobs.train --config ... train.export=[onnx,onnx-int8]     (at the end of training)

Writes ``onnx/`` inside the model folder (see :mod:`sentiment.export`): ``model.onnx``,
``model_quantized.onnx`` (optimum's names) and ``export.json`` with what each check measured, then
rewrites the folder's model card (``README.md``) to name them and say how to run them. The check
reviews are the checkpoint's own validation split, rebuilt from its data config (``--data`` or
``$IMDB_DATA_DIR`` for the location). A variant that fails its check is not written and the command
says why (exit 2).
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sentiment import layout, storage
from sentiment.batching import make_collator
from sentiment.cli import parse_command
from sentiment.config import ConfigError
from sentiment.data import DataError, SpecialTokens, encode_texts, fit_to_length, load_splits
from sentiment.export import MIN_CHECK_REVIEWS, CheckData, ExportError, export_model
from sentiment.layout import ONNX_DIR, CheckpointError, ResolvedModel
from sentiment.model_card import write_model_card
from sentiment.node_cache import open_local


class ExportConfig(BaseModel):
    """What ``ray_jobs.export`` does: one typed, validated object (the CLI only fills it in)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="Model folder, epoch checkpoint, run folder, 'best' or a URI.")
    which: Literal["best", "last"] = Field("best", description="Epoch of a run folder.")
    storage_path: str | None = Field(None, description="Where 'best' is looked up (default: run.storage_path's).")
    int8: bool = Field(False, description="Also write the int8 variant (verified against fp32).")
    data: str | None = Field(None, description="Data folder or file (default: the checkpoint's data config).")
    check_reviews: int = Field(
        MIN_CHECK_REVIEWS, ge=1, description=f"Validation reviews the checks run on (>= {MIN_CHECK_REVIEWS} for a real export).")


def check_data(model: ResolvedModel, tokenizer: Any, args: ExportConfig) -> CheckData:
    """The first ``check_reviews`` reviews of the checkpoint's validation split, encoded as it serves them."""
    cfg = model.config
    update: dict[str, Any] = {"max_train_samples": None, "max_val_samples": args.check_reviews}
    if args.data:
        update.update(path=args.data, source="auto")
    validation = load_splits(cfg.data.model_copy(update=update), cfg.model.label_names, cfg.model.multi_label)["validation"]
    specials, data = SpecialTokens.of(tokenizer), cfg.data
    ids = [fit_to_length(c, specials, data.max_seq_length, data.truncation, data.head_fraction)
           for c in encode_texts(tokenizer, list(validation["text"]))]
    thresholds = np.asarray(cfg.model.decision_thresholds) if cfg.model.multi_label else None
    return CheckData(ids, np.asarray(validation["label"]), thresholds)


def run(args: ExportConfig) -> dict[str, Any]:
    """Export, verify, write ``onnx/`` beside the weights and rewrite the model card; returns the
    ``export.json`` record.

    Raises:
        CheckpointError, DataError: a bad checkpoint or data.
        ExportError: a variant failed its check (what passed is written).
    """
    model = layout.resolve(args.checkpoint, args.which, args.storage_path)
    from transformers import AutoTokenizer

    with open_local(model) as local:
        tokenizer = AutoTokenizer.from_pretrained(local.path, use_fast=True)
        check = check_data(model, tokenizer, args)
        collate = make_collator(tokenizer, model.config.data.pad_to_multiple_of)
        print(f"export: {model.location}, checks on {len(check.ids)} validation reviews", flush=True)
        with storage.publish_dir(storage.child(model.location, ONNX_DIR)) as out:
            record = export_model(local.path, out, check, args.int8, collate, min(MIN_CHECK_REVIEWS, args.check_reviews))
    write_model_card(*storage.filesystem(model.location))
    for name, entry in record["exports"].items():
        print(f"export: {name} written ({entry['file']}, sha256 {entry['sha256'][:12]}): {entry['check']}", flush=True)
    if args.int8 and "onnx-int8" in record["rejected"]:
        tried = "; ".join(f"{r['recipe']}: {r['accuracy']:.4f} vs fp32 {r['fp32_accuracy']:.4f}" for r in record["rejected"]["onnx-int8"])
        raise ExportError(f"onnx-int8 not written: accuracy fell more than 0.5 point below fp32 with every recipe ({tried})")
    return record


def parse_args(argv: list[str] | None) -> ExportConfig:
    """Command-line arguments as an :class:`ExportConfig` (its fields are the options)."""
    return parse_command(ExportConfig, argv, prog="python -m ray_jobs.export", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: parse the arguments into an :class:`ExportConfig` and :func:`run` it."""
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ConfigError, DataError, ExportError) as err:  # one line naming it, exit 2
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
