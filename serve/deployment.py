"""The model replica: one checkpoint, loaded once, answering dynamically batched requests.

The checkpoint is named once, when the app is built (:func:`ray_jobs.checkpoints.resolve_checkpoint`):
a model folder, an epoch checkpoint, a run folder (its best or last epoch), the word ``best`` (the
sweep's recorded best) or a storage URI. Each replica then copies it locally if it is remote, loads it with
:class:`~sentiment.predict.Predictor` (tokenizer, max length, truncation and label names all come
from the checkpoint's ``train_config.json``), and records what it serves: the path and the sha256
of ``model.safetensors``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch
from ray import serve

from ray_jobs.checkpoints import WEIGHTS_FILE, local_model_dir, sha256_file
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

    def __init__(self, checkpoint: str, model: str, use_gpu: bool) -> None:
        """Load the model folder ``model`` (resolved from ``checkpoint`` by :func:`resolve_checkpoint`).

        Raises:
            CheckpointError: the checkpoint cannot be loaded.
            RuntimeError: a GPU was asked for but the replica sees none.
        """
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("num_gpus > 0 but this replica sees no CUDA device")
        device, dtype = ("cuda", torch.bfloat16) if use_gpu else ("cpu", torch.float32)
        local = local_model_dir(model)
        self.predictor = Predictor.load(local, device=device, dtype=dtype)
        cfg = self.predictor.cfg
        self.model_info = {
            "checkpoint": checkpoint,
            "path": model,
            "sha256": sha256_file(local / WEIGHTS_FILE),
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
            "serving checkpoint %s (model.safetensors sha256 %s) on %s/%s",
            model, self.model_info["sha256"], device, self.model_info["dtype"],
        )

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
