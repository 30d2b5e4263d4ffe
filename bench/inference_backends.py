"""In-process inference per backend: reviews/s and test accuracy, torch fp32 as the baseline, one run.

    python -m bench.inference_backends --checkpoint <fine-tuned model folder with onnx/>   # 1,000 reviews, 128 and 512
    python -m bench.inference_backends --smoke                                             # CI-sized

Every backend the checkpoint has a verified export for (``python -m ray_jobs.export --int8``), and
torch with bf16 weights where the CPU runs bf16 natively (AVX-512 BF16, AMX), runs
the same labelled IMDB test reviews (a seeded, stratified sample from ``$IMDB_DATA_DIR``) through
``Predictor.logits_for_ids``: the same tokenization, length-sorted batches of ``--batch-size``, and
this process's threads (all cores unless ``--threads``). Each backend is warmed up first. At 512
tokens the checkpoint's own length is overridden (it may have been trained shorter). Printed last:
each backend's reviews/s divided by torch fp32's, and its accuracy difference in points.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.common import at_length, commit, labelled_reviews, measure, synthetic_imdb, tiny_bert
from sentiment.layout import resolve
from sentiment.precision import cpu_has_fast_bf16
from sentiment.predict import Predictor

DATA_DIR_ENV = "IMDB_DATA_DIR"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="fine-tuned model folder with verified exports (required unless --smoke)")
    p.add_argument("--reviews", type=int, default=1000)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)")
    p.add_argument("--smoke", action="store_true", help="CI-sized: a tiny exported model, 64 reviews at 64 tokens")
    args = p.parse_args(argv)
    if args.smoke:
        args.reviews, args.lengths = 64, [64]
    elif not args.checkpoint:
        p.error("--checkpoint is required (a fine-tuned model folder exported with python -m ray_jobs.export --int8)")
    return args


def smoke_checkpoint(folder: Path) -> Path:
    """A tiny BERT exported with both variants (its checks on 40 synthetic reviews)."""
    from ray_jobs import export
    from sentiment.config import load_config
    from sentiment.model import build_model, load_tokenizer
    from sentiment.model_folder import save_model_dir

    tiny = tiny_bert(folder / "tiny")
    cfg = load_config(None, [f"model.name_or_path={tiny}", "data.max_seq_length=64"])
    model = save_model_dir(build_model(cfg.model), load_tokenizer(str(tiny)), cfg, {}, folder / "model")
    data = synthetic_imdb(folder / "data")
    export.main(["--checkpoint", str(model), "--int8", "--data", str(data), "--check-reviews", "40"])
    return model


def load(model: Any, backend: str) -> Predictor:
    """``backend`` of ``model``: ``torch`` is exactly fp32 (the baseline), ``torch-bf16`` the same
    weights in bf16 (measured only where the CPU runs bf16 natively)."""
    if not backend.startswith("torch"):
        return Predictor.load(model, backend=backend)
    return Predictor.load(model, backend="torch", dtype=torch.bfloat16 if backend == "torch-bf16" else torch.float32)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every backend at every length; print the table, then the ratios last."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts, labels = labelled_reviews(args.reviews)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = smoke_checkpoint(Path(tmp)) if args.smoke else Path(args.checkpoint)
        model = resolve(checkpoint)
        backends = ["torch", *(["torch-bf16"] if cpu_has_fast_bf16() else []),
                    *[b for b in ("onnx", "onnx-int8") if b in model.exports]]
        for length in args.lengths:
            for backend in backends:
                predictor = at_length(load(model, backend), length)
                rows.append({"length": length, "backend": backend, **measure(predictor, texts, labels, args.batch_size)})
                predictor.close()
    table = pd.DataFrame(rows)
    base = table[table.backend == "torch"].set_index("length")
    table["speedup"] = [r.reviews_per_s / base.loc[r.length, "reviews_per_s"] for r in table.itertuples()]
    table["accuracy_points"] = [100 * (r.accuracy - base.loc[r.length, "accuracy"]) for r in table.itertuples()]
    print(f"\n{len(texts)} IMDB test reviews, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, {dt.date.today()}, commit {commit()}, checkpoint {checkpoint if not args.smoke else 'tiny (smoke)'}")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for r in table[table.backend != "torch"].itertuples():
        print(f"{r.backend} / torch fp32 at {r.length} tokens: {r.speedup:.3g}x, accuracy {r.accuracy_points:+.1f} points")
    return rows


if __name__ == "__main__":
    main()
