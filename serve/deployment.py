"""The model replicas: one checkpoint, loaded once, answering dynamically batched requests; and
the explainer replicas, which attribute predictions apart from them.

The checkpoint is resolved once, when the app is built (:func:`sentiment.layout.resolve`), and
each replica gets that record: where the model folder is, the sha256 of its weights, its training
config. A replica loads it with :class:`~sentiment.predict.Predictor` (from this node's cached
copy when it is remote: one download per node, removed when no replica holds it), without
resolving again but re-hashing the files it loads against the record; max length, truncation and
label names all come from the checkpoint's ``train_config.json``. The texts arrive tokenized by the
ingress (:class:`~sentiment.predict.TextEncoder`, the same tokenizer and settings).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import torch
from ray import serve

from sentiment.layout import ResolvedModel
from sentiment.precision import inference_dtype
from sentiment.predict import Encoded, KeyToken, Prediction, Predictor
from serve.batcher import ContinuousBatcher
from serve.metrics import ModelMetrics
from serve.schemas import BatchConfig

logger = logging.getLogger("ray.serve")


@serve.deployment
class SentimentModel:
    """One replica of the model, in the precision :func:`sentiment.precision.inference_dtype` picks.

    A :class:`~serve.batcher.ContinuousBatcher` gathers single texts from concurrent requests into
    batches that start when the model is free (by texts and padded tokens), which
    :class:`Predictor` tokenizes at once, sorts by length and pads to the longest (a multiple of
    ``pad_to_multiple_of``). Batch limits and wait come from ``user_config`` (see
    :meth:`reconfigure`), so ``serve deploy`` can change them without reloading the model.
    """

    def __init__(self, model: ResolvedModel, use_gpu: bool, backend: str = "auto", long_reviews: str | None = None) -> None:
        """Load the resolved checkpoint ``model``; ``long_reviews`` overrides its ``data.long_reviews``.

        Raises:
            CheckpointError: the checkpoint cannot be loaded.
            RuntimeError: a GPU was asked for but the replica sees none.
        """
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("num_gpus > 0 but this replica sees no CUDA device")
        device = "cuda" if use_gpu else "cpu"  # the dtype: inference_dtype, in Predictor.load
        self.predictor = Predictor.load(model, device=device, backend=backend, long_reviews=long_reviews)
        self.predictor.predict_details(["warm up"])  # the first request pays no one-off cost; ready means warm
        self.batcher = ContinuousBatcher(self._details, tokens=lambda encoded: sum(map(len, encoded.windows)),
                                         observe=ModelMetrics().record)
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
                "problem_type": cfg.model.problem_type,
                "thresholds": self.predictor.thresholds.tolist() if self.predictor.multi_label else None,
                "max_seq_length": cfg.data.max_seq_length,
                "truncation": cfg.data.truncation,
                "head_fraction": cfg.data.head_fraction,
                "long_reviews": self.predictor.long_reviews,
                "chunk_stride": cfg.data.chunk_stride,
                "pad_to_multiple_of": cfg.data.pad_to_multiple_of,
            },
            "device": device,
            "dtype": self.predictor.backend.dtype,
        }
        logger.info(
            "serving checkpoint %s (%s sha256 %s) with %s on %s/%s",
            model.location, served_file, served_sha, self.predictor.backend.name, device, self.model_info["dtype"],
        )

    def __del__(self) -> None:
        """Serve calls this when the replica stops: give up this node's copy of a remote checkpoint."""
        if getattr(self, "predictor", None) is not None:
            self.predictor.close()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a :class:`~serve.schemas.BatchConfig` from ``user_config``.

        Raises:
            pydantic.ValidationError: a limit out of range (``max_batch_size: 0`` would never run a batch).
        """
        batch = BatchConfig.model_validate(config)
        self.batcher.max_texts, self.batcher.max_tokens = batch.max_batch_size, batch.max_batch_tokens
        self.batcher.wait_s = batch.batch_wait_timeout_s

    async def predict(self, text: Encoded) -> Prediction:
        """Predict one text, encoded once by the ingress (:class:`~sentiment.predict.TextEncoder`),
        in a batch with the texts of other requests (the forward pass runs in a thread, so texts
        keep arriving while a batch computes); its windows give the batcher its token count."""
        return await self.batcher(text)

    def _details(self, texts: list[Encoded]) -> list[Prediction]:
        """One batch of encoded texts, scored in one pass."""
        return self.predictor.details(Encoded.join(texts), batch_size=max(len(texts), self.batcher.max_texts))

    def info(self) -> dict[str, Any]:
        """What this replica serves: checkpoint, path, sha256, labels, metrics, config summary."""
        return self.model_info


def in_background() -> None:
    """Run the calling thread only on CPU time nothing else wants (Linux's ``SCHED_IDLE``; elsewhere
    the lowest priority). A thread of its own, not the process: Linux schedules threads."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.setpriority(os.PRIO_PROCESS, 0, 19)


@serve.deployment
class SentimentExplainer:
    """An explainer replica: integrated-gradients key tokens toward labels the model replicas chose.

    It runs apart from the model replicas, so explained requests never hold a prediction slot: its
    own ``max_ongoing_requests`` (1: Captum hooks the embedding layer while it attributes) and
    ``max_queued_requests`` bound them, and a full queue is refused at once. It holds a torch fp32
    copy of the checkpoint (gradients need torch; loaded by the first explained request) and runs
    on ``threads`` CPU threads in the background (:func:`in_background`), so explaining takes only
    what the predictions leave of at most that share of the cores.
    """

    def __init__(self, model: ResolvedModel, threads: int) -> None:
        torch.set_num_threads(threads)
        self.model = model
        self.predictor: Predictor | None = None

    def __del__(self) -> None:
        """Give up this node's copy of a remote checkpoint."""
        if getattr(self, "predictor", None) is not None:
            self.predictor.close()

    async def explain(self, encoded: Encoded, targets: list[int], top_k: int, n_steps: int) -> list[list[KeyToken]]:
        """Each encoded text's ``top_k`` key tokens toward its label ``targets[i]``
        (:func:`sentiment.attribution.key_tokens`)."""
        from sentiment.attribution import key_tokens  # Captum: imported by the first explained request only

        def attribute() -> list[list[KeyToken]]:
            in_background()
            if self.predictor is None:
                dtype = inference_dtype(self.model.config.train.precision, "cpu", gradients=True)
                self.predictor = Predictor.load(self.model, dtype=dtype, backend="torch")
            return key_tokens(self.predictor, encoded, targets, top_k, n_steps)

        return await asyncio.to_thread(attribute)
