"""The model replica: one checkpoint, loaded once, answering dynamically batched requests.

The checkpoint is resolved once, when the app is built (:func:`sentiment.layout.resolve`), and
each replica gets that record: where the model folder is, the sha256 of its weights, its training
config. A replica loads it with :class:`~sentiment.predict.Predictor` (from this node's cached
copy when it is remote: one download per node, removed when no replica holds it), without
resolving or hashing again; tokenizer, max length, truncation and label names all come from the
checkpoint's ``train_config.json``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from ray import serve

from sentiment.layout import ResolvedModel
from sentiment.predict import Prediction, Predictor

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.01
DEFAULT_MAX_BATCH_TOKENS = 4096


class TokenBudget:
    """``@serve.batch``'s size of a batch, so that it closes at ``max_texts`` texts or at
    ``max_tokens`` padded tokens (texts x the longest one's tokens), whichever comes first.

    Serve closes a batch when this size would pass ``max_batch_size`` (= ``max_texts``), so the
    token count is scaled into those units. One 512-token review then shares a batch with few
    others instead of making 31 short ones pay for its padding (the approach of Hugging Face's
    text-embeddings-inference). Token counts are the model's own (truncation included), cached.
    """

    def __init__(self, max_texts: int = DEFAULT_MAX_BATCH_SIZE, max_tokens: int | None = None) -> None:
        self.max_texts, self.max_tokens = max_texts, max_tokens
        self.tokens: Callable[[str], int] = lambda text: 1

    def count_with(self, predictor: Predictor) -> None:
        """Count tokens as ``predictor`` encodes (cached for the texts most recently seen)."""
        self.tokens = functools.lru_cache(maxsize=4096)(lambda text: len(predictor.encode([text])[0][0]))

    def __call__(self, texts: list[str]) -> int:
        if self.max_tokens is None:
            return len(texts)
        padded = len(texts) * max(self.tokens(t) for t in texts)
        return max(len(texts), math.ceil(padded * self.max_texts / self.max_tokens))


BUDGET = TokenBudget()  # one replica per process: the batch decorator below consults this one


@serve.deployment
class SentimentModel:
    """One replica of the model: bf16 on a GPU when the replica has one, fp32 on CPU.

    ``@serve.batch`` gathers single texts from concurrent requests into one batch, which
    :class:`Predictor` tokenizes at once, sorts by length and pads to the longest (a multiple of
    ``pad_to_multiple_of``). Batch size and wait come from ``user_config`` (see :meth:`reconfigure`),
    so ``serve deploy`` can change them without reloading the model.
    """

    def __init__(self, model: ResolvedModel, use_gpu: bool, backend: str = "auto") -> None:
        """Load the resolved checkpoint ``model``.

        Raises:
            CheckpointError: the checkpoint cannot be loaded.
            RuntimeError: a GPU was asked for but the replica sees none.
        """
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("num_gpus > 0 but this replica sees no CUDA device")
        device, dtype = ("cuda", torch.bfloat16) if use_gpu else ("cpu", torch.float32)
        self.predictor = Predictor.load(model, device=device, dtype=dtype, backend=backend)
        self.explainer: Predictor | None = None  # loaded by the first explained request
        self.explain_lock = asyncio.Lock()
        self.load_args = {"checkpoint": model, "device": device, "dtype": dtype, "backend": "torch"}
        BUDGET.count_with(self.predictor)
        cfg = model.config
        served_file, served_sha = self.predictor.served_file
        self.model_info = {
            "checkpoint": model.reference,
            "path": model.location,
            "backend": self.predictor.backend.name,
            "file": served_file,
            "sha256": served_sha,
            "weights_sha256": model.sha256,
            "label_names": self.predictor.label_names,
            "metrics": self.predictor.metrics,
            "config": {
                "name_or_path": cfg.model.name_or_path,
                "num_labels": cfg.model.num_labels,
                "max_seq_length": cfg.data.max_seq_length,
                "truncation": cfg.data.truncation,
                "head_fraction": cfg.data.head_fraction,
                "pad_to_multiple_of": cfg.data.pad_to_multiple_of,
            },
            "device": device,
            "dtype": str(dtype).removeprefix("torch."),
        }
        logger.info(
            "serving checkpoint %s (%s sha256 %s) with %s on %s/%s",
            model.location, served_file, served_sha, self.predictor.backend.name, device, self.model_info["dtype"],
        )

    def __del__(self) -> None:
        """Serve calls this when the replica stops: give up this node's copy of a remote checkpoint."""
        for predictor in (getattr(self, "predictor", None), getattr(self, "explainer", None)):
            if predictor is not None:
                predictor.close()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``{"max_batch_size": int, "max_batch_tokens": int | None, "batch_wait_timeout_s": float}``
        from ``user_config``."""
        BUDGET.max_texts = config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        BUDGET.max_tokens = config.get("max_batch_tokens")
        self.predict.set_max_batch_size(BUDGET.max_texts)
        self.predict.set_batch_wait_timeout_s(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S))

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
                 batch_size_fn=BUDGET)
    async def predict(self, texts: list[str]) -> list[Prediction]:
        """Predict one batch of texts (callers pass one text; Serve assembles the batch).

        The forward pass runs in a thread, so the next batch gathers while this one computes.
        """
        return await asyncio.to_thread(self.predictor.predict_details, texts, len(texts))

    async def explain(self, texts: list[str], top_k: int, n_steps: int) -> list[Prediction]:
        """Predictions with key tokens (:func:`sentiment.attribution.explain`), outside the batches.

        They run on a second torch copy of the model, one request at a time: Captum hooks the
        embedding layer while it attributes, which must not touch the batched predictions that go
        on meanwhile in another thread.
        """
        from sentiment.attribution import explain  # Captum: imported by the first explained request only

        async with self.explain_lock:
            if self.explainer is None:
                self.explainer = await asyncio.to_thread(Predictor.load, **self.load_args)
            return await asyncio.to_thread(explain, self.explainer, texts, top_k, n_steps)

    def info(self) -> dict[str, Any]:
        """What this replica serves: checkpoint, path, sha256, labels, metrics, config summary."""
        return self.model_info
