"""Score many reviews with Ray Data: a pool of model actors (GPUs when the cluster has them).

Reviews are sorted by length before they are cut into blocks, so each block pads little; every
row carries its input position, and the result comes back in input order. The driver streams
the finished blocks (showing reviews/s and ETA) and reassembles them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import ray

from sentiment.layout import ResolvedModel
from sentiment.node_cache import prune_cache
from sentiment.precision import inference_dtype
from sentiment.predict import Predictor
from sentiment.progress import Progress

ROW = "_row"
TEXT = "_text"
PREDICTED = "predicted_label"
PREDICTED_LABELS = "predicted_labels"
SCORE = "score"
NUM_TOKENS = "num_tokens"
TRUNCATED = "truncated"
WINDOWS = "windows"
KEY_TOKENS = "key_tokens"


def probability_column(label: str) -> str:
    """Name of the column holding the (temperature-scaled) probability of ``label``."""
    return f"prob_{label}"


def logit_column(label: str, truncated: bool = False) -> str:
    """Name of the column holding the raw logit of ``label`` (the truncated window's, in a
    comparison of chunked and truncated scoring)."""
    return f"{'truncated_' if truncated else ''}logit_{label}"


class ReviewScorer:
    """A Ray Data actor: loads the resolved model once (this node's copy of a remote one), then
    scores blocks of reviews.

    Returns only the row position and the predictions (the texts stay where they are); with
    ``explain`` (``{"top_k": ..., "n_steps": ...}``, torch only) also each review's key tokens, as
    JSON (``[{"word": ..., "score": ...}, ...]``, see :func:`sentiment.attribution.explain`).
    ``long_reviews`` overrides the checkpoint's ``data.long_reviews``; ``compare`` scores long
    reviews both ways (chunks, plus ``truncated_logit_<label>`` columns).
    """

    def __init__(
        self, model: ResolvedModel, use_gpu: bool, batch_size: int, backend: str = "auto",
        explain: dict[str, int] | None = None, long_reviews: str | None = None, compare: bool = False,
    ) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor is noise in job logs
        device = "cuda" if use_gpu else "cpu"
        dtype = inference_dtype(model.config.train.precision, device, gradients=bool(explain))
        self.predictor = Predictor.load(model, device=device, dtype=dtype, backend=backend,
                                        long_reviews="chunks" if compare else long_reviews)
        self.batch_size = batch_size
        self.explain = explain
        self.compare = compare

    def __call__(self, block: pd.DataFrame) -> pd.DataFrame:
        """Score one block: ``_row`` and ``_text`` in, ``_row`` and the prediction columns out."""
        p = self.predictor
        texts = block[TEXT].tolist()
        if self.compare:
            encoded, logits, truncated_logits = p.chunked_and_truncated_logits(texts, self.batch_size)
        else:
            encoded = p.encode(texts)
            logits = p.logits(encoded, self.batch_size)
        proba = p.probabilities(logits)
        out = {ROW: block[ROW].to_numpy(), PREDICTED: [p.label_names[i] for i in proba.argmax(axis=1)],
               SCORE: proba.max(axis=1)}
        if p.multi_label:  # the labels above their thresholds, as a list (none: empty)
            out[PREDICTED_LABELS] = p.decide(proba)
        out.update({probability_column(n): proba[:, i] for i, n in enumerate(p.label_names)})
        out.update({logit_column(n): logits[:, i] for i, n in enumerate(p.label_names)})
        if self.compare:
            out.update({logit_column(n, truncated=True): truncated_logits[:, i] for i, n in enumerate(p.label_names)})
        out[NUM_TOKENS] = encoded.full_lengths
        out[TRUNCATED] = encoded.truncated
        out[WINDOWS] = encoded.counts
        if self.explain is not None:
            from sentiment.attribution import explain

            explained = explain(p, block[TEXT].tolist(), **self.explain)
            out[KEY_TOKENS] = [json.dumps([vars(k) for k in e.key_tokens or []]) for e in explained]
        return pd.DataFrame(out)

    def __del__(self) -> None:
        self.predictor.close()


def cluster_has_gpus() -> bool:
    """Whether the Ray cluster has (or reports) any GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0


def default_workers(use_gpu: bool) -> int:
    """One actor per GPU, or per CPU without GPUs."""
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU" if use_gpu else "CPU", 1)))


def score_texts(
    texts: list[str],
    model: ResolvedModel,
    workers: int,
    use_gpu: bool,
    batch_size: int = 64,
    label: str = "predict",
    backend: str = "auto",
    explain: dict[str, int] | None = None,
    long_reviews: str | None = None,
    compare: bool = False,
) -> tuple[pd.DataFrame, float]:
    """Predict every text with ``workers`` model actors on the current Ray.

    Args:
        texts: non-empty review texts.
        model: the resolved checkpoint (a local folder readable by the workers, or a URI each node copies once).
        workers: actors in the pool (each holds 1 GPU, or 1 CPU).
        use_gpu: put the actors on GPUs (bf16) instead of CPUs (fp32).
        batch_size: reviews per forward pass inside an actor.
        label: prefix of the progress lines.
        backend: inference backend of the actors (see :mod:`sentiment.backends`).
        explain: ``{"top_k": ..., "n_steps": ...}`` to add a ``key_tokens`` column (torch backend only).
        long_reviews: ``truncate`` or ``chunks``; None keeps the checkpoint's ``data.long_reviews``.
        compare: score chunked, and add the truncated window's logits of long reviews as
            ``truncated_logit_<label>`` columns (evaluate's both-ways report).

    Returns:
        The prediction columns, one row per text in input order, and the reviews/s achieved.
    """
    order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: no straggler at the end
    rows = pd.DataFrame({ROW: order, TEXT: [texts[i] for i in order]})
    block = max(batch_size, min(1024, math.ceil(len(texts) / (workers * 8))))  # >= 8 blocks per actor
    blocks = [rows.iloc[s:s + block].reset_index(drop=True) for s in range(0, len(rows), block)]
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    ds = ray.data.from_pandas(blocks).map_batches(
        ReviewScorer, fn_constructor_kwargs={"model": model, "use_gpu": use_gpu, "batch_size": batch_size, "backend": backend,
                               "explain": explain, "long_reviews": long_reviews, "compare": compare},
        batch_size=block, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers), **resources,
    )
    progress = Progress(len(texts), label)
    parts = []
    for part in ds.iter_batches(batch_size=None, batch_format="pandas"):
        parts.append(part)
        progress.update(len(part))
    rate = progress.close()
    prune_cache()  # this node's copies that no live process holds any more
    result = pd.concat(parts, ignore_index=True).sort_values(ROW, kind="stable")
    if not np.array_equal(result[ROW].to_numpy(), np.arange(len(texts))):
        raise RuntimeError(f"batch inference returned {len(result)} rows for {len(texts)} texts")
    return result.drop(columns=ROW).reset_index(drop=True), rate


def quiet_ray_data() -> None:
    """Ray Data's own progress bars off: :class:`Progress` reports reviews/s and ETA instead."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
