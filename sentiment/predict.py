"""In-process predictions from a checkpoint, tokenized exactly as training did, on any backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from sentiment.backends import Backend, TorchBackend, choose_backend, onnx_backend
from sentiment.batching import eval_batches, iterate, make_collator
from sentiment.config import Config, DataConfig
from sentiment.data import SpecialTokens, chunked_inputs, encode_texts, fit_to_length, mean_by_owner
from sentiment.layout import WEIGHTS_FILE, CheckpointError, ResolvedModel, read_temperature, resolve
from sentiment.metrics import sigmoid, softmax
from sentiment.node_cache import LocalModel, open_local, verify_files
from sentiment.precision import inference_dtype


class ExplainUnavailable(ValueError):
    """Attributions were asked of a predictor whose backend gives no gradients (ONNX)."""


@dataclass
class KeyToken:
    """A word of one text and its integrated-gradients attribution toward the predicted label
    (summed over its subword tokens and its occurrences in the text)."""

    word: str
    score: float


@dataclass
class Prediction:
    """One text's prediction; ``key_tokens`` only when explained (``sentiment.attribution.explain``).

    ``label`` and ``score`` are the most probable label and its probability. A multi-label model's
    ``probabilities`` are one sigmoid per label (they need not sum to 1) and ``labels`` the labels
    above their thresholds (maybe none); a single-label model's ``labels`` is None.
    """

    label: str
    score: float
    probabilities: dict[str, float]
    num_tokens: int
    truncated: bool
    windows: int = 1
    key_tokens: list[KeyToken] | None = None
    logits: list[float] | None = None  # raw, before the temperature, in label order
    labels: list[str] | None = None


@dataclass
class Encoded:
    """Model inputs of some texts: each text's windows, in text order (one window per text when
    truncating, or when the text fits the budget).

    Attributes:
        windows: model-ready ids of every window.
        owners: ``(n_windows,)`` the text each window belongs to.
        full_lengths: ``(n_texts,)`` each text's whole length in tokens, special tokens once.
        seen: ``(n_texts,)`` the tokens of each text the model sees, special tokens once.
    """

    windows: list[list[int]]
    owners: np.ndarray
    full_lengths: np.ndarray
    seen: np.ndarray

    @property
    def truncated(self) -> np.ndarray:
        """Whether part of each text is never scored."""
        return self.seen < self.full_lengths

    @property
    def counts(self) -> np.ndarray:
        """Windows per text."""
        return np.bincount(self.owners, minlength=len(self.full_lengths))

    def aggregate(self, window_logits: np.ndarray) -> np.ndarray:
        """Each text's logits: the mean of its windows' logits (a text with one window keeps its own
        logits exactly)."""
        return mean_by_owner(window_logits, self.owners, len(self.full_lengths))

    def split(self) -> list[Encoded]:
        """One encoding per text, in order (the inverse of :meth:`join`)."""
        ends = np.cumsum(self.counts)
        return [Encoded(self.windows[end - n:end], np.zeros(n, dtype=self.owners.dtype), self.full_lengths[i:i + 1],
                        self.seen[i:i + 1]) for i, (n, end) in enumerate(zip(self.counts.tolist(), ends.tolist()))]

    @classmethod
    def join(cls, parts: Sequence[Encoded]) -> Encoded:
        """The texts of ``parts`` (at least one) as one encoding, in order; each window keeps its text."""
        starts = np.cumsum([0] + [len(p.full_lengths) for p in parts[:-1]])
        return cls(
            [w for p in parts for w in p.windows],
            np.concatenate([p.owners + start for p, start in zip(parts, starts)]),
            np.concatenate([p.full_lengths for p in parts]),
            np.concatenate([p.seen for p in parts]),
        )


class TextEncoder:
    """Texts to model-ready windows, cleaned and tokenized exactly as training did.

    Args:
        tokenizer: the checkpoint's tokenizer.
        data: the checkpoint's data config (max length, truncation, chunk stride).
        long_reviews: ``truncate`` or ``chunks``; None: the config's ``long_reviews``.

    Raises:
        ValueError: ``long_reviews`` is neither.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig, long_reviews: str | None = None) -> None:
        if long_reviews not in (None, "truncate", "chunks"):
            raise ValueError(f"long_reviews={long_reviews!r}: choose truncate or chunks")
        self.tokenizer, self.data = tokenizer, data
        self.long_reviews: str = long_reviews or data.long_reviews
        self.specials = SpecialTokens.of(tokenizer)

    @classmethod
    def load(cls, model: ResolvedModel, long_reviews: str | None = None) -> TextEncoder:
        """The encoder of a resolved checkpoint: its tokenizer (from the model folder, or this
        node's cached copy of a remote one, given back at once) and its data config.

        Raises:
            CheckpointError: the tokenizer cannot be loaded.
            ValueError: ``long_reviews`` is neither ``truncate`` nor ``chunks``.
        """
        with open_local(model) as local:
            try:
                tokenizer = AutoTokenizer.from_pretrained(local.path, use_fast=True)
            except Exception as err:
                raise CheckpointError(f"checkpoint {model.location!r}: tokenizer cannot be loaded: {err}") from None
        return cls(tokenizer, model.config.data, long_reviews)

    def encode(self, texts: list[str], long_reviews: str | None = None) -> Encoded:
        """Model-ready windows of each text, cleaned like training: the one window ``data.truncation``
        keeps, or with ``chunks`` windows covering the whole text (``long_reviews`` defaults to the
        encoder's)."""
        data = self.data
        content = encode_texts(self.tokenizer, texts)  # cleans like training
        full = np.asarray([len(c) + len(self.specials) for c in content], dtype=np.int64)
        if (long_reviews or self.long_reviews) == "chunks":
            windows, owners = chunked_inputs(content, self.specials, data.max_seq_length, data.chunk_stride)
            return Encoded(windows, owners, full, full.copy())
        windows = [fit_to_length(c, self.specials, data.max_seq_length, data.truncation, data.head_fraction) for c in content]
        return Encoded(windows, np.arange(len(texts)), full, np.asarray([len(w) for w in windows], dtype=np.int64))


class Predictor:
    """A loaded checkpoint that predicts labels for raw texts.

    Example:
        >>> p = Predictor.load("runs/my-run")            # run folder, epoch checkpoint or model folder
        >>> p.predict(["A fun brain candy movie."], return_proba=True)
    """

    def __init__(
        self, backend: Backend, tokenizer: PreTrainedTokenizerBase, resolved: ResolvedModel, local: LocalModel, temperature: float = 1.0
    ) -> None:
        self.backend = backend
        self.model = backend.model if isinstance(backend, TorchBackend) else None  # gradients (attributions) need torch
        self.temperature = temperature  # probabilities are softmax(logits / temperature)
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.local = local
        self.cfg: Config = resolved.config
        self.metrics = resolved.metrics
        self.encoder = TextEncoder(tokenizer, self.cfg.data)  # :meth:`load` may override its long_reviews
        self.path = str(local.path)
        self.label_names = list(self.cfg.model.label_names)
        self.multi_label = self.cfg.model.multi_label
        self.thresholds = np.asarray(self.cfg.model.decision_thresholds)  # used by a multi-label model
        self.collate = make_collator(tokenizer, self.cfg.data.pad_to_multiple_of)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike[str] | ResolvedModel,
        which: str = "best",
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        storage_path: str | None = None,
        backend: str = "torch",
        long_reviews: str | None = None,
    ) -> Predictor:
        """Load a checkpoint: a :class:`~sentiment.layout.ResolvedModel` (resolved once by the
        caller, never again here: the files this backend loads are hashed again against it), or any
        reference :func:`sentiment.layout.resolve` takes (a model folder, an epoch checkpoint, a run
        folder's ``best`` or ``last``, a sweep folder, ``best`` under ``storage_path``, a URI). A
        remote model is loaded from this node's cached copy, held until :meth:`close`. A
        temperature saved with the model (``calibration.json``) scales the probabilities it returns. ``backend`` is ``torch``,
        ``onnx``, ``onnx-int8`` or ``auto`` (see :mod:`sentiment.backends`); every backend gives the
        same outputs within its verified tolerance, and the same errors. ``long_reviews``
        (``truncate`` or ``chunks``) overrides the checkpoint's ``data.long_reviews``. ``dtype`` is
        the torch backend's weights, exactly; None (the default) is bf16 for a checkpoint trained in
        bf16 on a device that runs bf16 natively, as its test was scored, else float32
        (:func:`sentiment.precision.inference_dtype`).

        Raises:
            CheckpointError: missing, incomplete or corrupt checkpoint, not a sequence classifier,
                or a backend it has no verified export for.
        """
        handed = isinstance(checkpoint, ResolvedModel)
        resolved = checkpoint if isinstance(checkpoint, ResolvedModel) else resolve(checkpoint, which, storage_path)
        kind = choose_backend(backend, resolved, device)
        local = open_local(resolved)
        try:
            if handed:  # resolved elsewhere, maybe long ago: the files loaded must still be the ones checked
                verify_files(local.path, resolved.expected_files(kind))
            temperature = read_temperature(local.path)
            tokenizer = AutoTokenizer.from_pretrained(local.path, use_fast=True)
            if kind == "torch":
                dtype = dtype or inference_dtype(resolved.config.train.precision, device)
                model = AutoModelForSequenceClassification.from_pretrained(local.path, use_safetensors=True, dtype=dtype)
                runner: Backend = TorchBackend(model.to(device))
            else:
                model, runner = None, onnx_backend(kind, resolved, local.path)
        except Exception as err:
            local.close()
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint {resolved.location!r} cannot be loaded: {err}") from None
        if model is not None and model.config.num_labels != resolved.config.model.num_labels:
            local.close()
            raise CheckpointError(
                f"{resolved.location}: model has {model.config.num_labels} labels, config {resolved.config.model.num_labels}"
            )
        predictor = cls(runner, tokenizer, resolved, local, temperature)
        try:
            predictor.encoder = TextEncoder(tokenizer, resolved.config.data, long_reviews)
        except ValueError:
            local.close()
            raise
        return predictor

    @property
    def served_file(self) -> tuple[str, str]:
        """The file this predictor runs and its sha256 (the weights, or the ONNX export)."""
        if self.backend.name == "torch":
            return WEIGHTS_FILE, self.resolved.sha256
        export = self.resolved.exports[self.backend.name]
        return export["file"], export["sha256"]

    def close(self) -> None:
        """Give up this node's cached copy of a remote checkpoint (nothing to do for a local one)."""
        self.local.close()

    @property
    def long_reviews(self) -> str:
        """How long texts are scored: ``truncate`` or ``chunks`` (the encoder's setting)."""
        return self.encoder.long_reviews

    def encode(self, texts: list[str], long_reviews: str | None = None) -> Encoded:
        """:meth:`TextEncoder.encode` with this predictor's tokenizer and settings."""
        return self.encoder.encode(texts, long_reviews)

    def logits_for_ids(self, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
        """Raw logits (no temperature) for already-encoded inputs, batched by length, in input order."""
        out = np.zeros((len(ids), len(self.label_names)), dtype=np.float32)
        batches = eval_batches([len(x) for x in ids], batch_size)
        for idx, batch in iterate(ids, None, batches, self.collate):
            out[idx] = self.backend.logits(batch)
        return out

    def logits(self, encoded: Encoded, batch_size: int = 64) -> np.ndarray:
        """Raw logits (no temperature) of each encoded text: its windows scored in the same
        length-sorted batches, then averaged (:meth:`Encoded.aggregate`)."""
        return encoded.aggregate(self.logits_for_ids(encoded.windows, batch_size))

    def chunked_and_truncated_logits(self, texts: list[str], batch_size: int = 64) -> tuple[Encoded, np.ndarray, np.ndarray]:
        """Both ways of scoring long texts in one pass: the chunked encoding, its logits, and the
        truncated logits. Only texts longer than the budget get an extra (truncated) window; the
        others have one window, the same both ways, so their two logits are identical."""
        chunked = self.encode(texts, "chunks")
        long = np.flatnonzero(chunked.counts > 1)
        plain = self.encode([texts[i] for i in long], "truncate")
        raw = self.logits_for_ids(chunked.windows + plain.windows, batch_size)
        logits = chunked.aggregate(raw[: len(chunked.windows)])
        truncated = logits.copy()
        truncated[long] = raw[len(chunked.windows):]
        return chunked, logits, truncated

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities from raw logits, with the checkpoint's temperature applied (a
        multi-label model's: one sigmoid per label)."""
        scaled = np.asarray(logits, dtype=np.float64) / self.temperature
        return sigmoid(scaled) if self.multi_label else softmax(scaled)

    def decide(self, proba: np.ndarray) -> list[list[str]]:
        """A multi-label model's labels for each row of ``probabilities``: those above their threshold."""
        return [[n for n, above in zip(self.label_names, row) if above] for row in proba > self.thresholds[None, :]]

    def predict(self, texts: list[str], return_proba: bool = False, batch_size: int = 64) -> list[str] | list[list[str]] | np.ndarray:
        """Label names for ``texts`` (a multi-label model: a list of them per text, maybe empty), or an
        ``(n, num_labels)`` probability array with ``return_proba``."""
        proba = self.probabilities(self.logits(self.encode(texts), batch_size))
        if return_proba:
            return proba
        if self.multi_label:
            return self.decide(proba)
        return [self.label_names[i] for i in proba.argmax(axis=1)]

    def predict_details(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        """Label, score, all probabilities, tokens seen, truncation and windows for each text."""
        return self.details(self.encode(texts), batch_size=batch_size)

    def details(self, encoded: Encoded, batch_size: int = 64) -> list[Prediction]:
        """:meth:`predict_details` for texts already encoded by :meth:`encode`."""
        logits = self.logits(encoded, batch_size)
        proba = self.probabilities(logits)
        decided = self.decide(proba) if self.multi_label else [None] * len(proba)
        results = []
        for p, raw, seen, truncated, windows, labels in zip(proba, logits, encoded.seen, encoded.truncated, encoded.counts, decided):
            top = int(p.argmax())
            results.append(
                Prediction(
                    label=self.label_names[top],
                    score=float(p[top]),
                    probabilities={n: float(v) for n, v in zip(self.label_names, p)},
                    num_tokens=int(seen),
                    truncated=bool(truncated),
                    windows=int(windows),
                    logits=[float(v) for v in raw],
                    labels=labels,
                )
            )
        return results

