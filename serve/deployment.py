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
import logging
from typing import Any

import torch
from ray import serve

from sentiment.layout import ResolvedModel
from sentiment.predict import Prediction, Predictor

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.01


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
        if hasattr(self, "predictor"):
            self.predictor.close()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``{"max_batch_size": int, "batch_wait_timeout_s": float}`` from ``user_config``."""
        self.predict.set_max_batch_size(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        self.predict.set_batch_wait_timeout_s(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S))

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def predict(self, texts: list[str]) -> list[Prediction]:
        """Predict one batch of texts (callers pass one text; Serve assembles the batch).

        The forward pass runs in a thread, so the next batch gathers while this one computes.
        """
        return await asyncio.to_thread(self.predictor.predict_details, texts, len(texts))

    def info(self) -> dict[str, Any]:
        """What this replica serves: checkpoint, path, sha256, labels, metrics, config summary."""
        return self.model_info
