"""Inference backends: the same logits from PyTorch or from a verified ONNX Runtime export.

``torch`` runs the Hugging Face model (bf16 on a GPU; on a CPU, bf16 for a checkpoint trained in
bf16 where the CPU runs bf16 natively, else fp32). ``onnx`` and ``onnx-int8``
run the graphs ``python -m ray_jobs.export`` wrote and verified beside the weights
(``model/onnx/model.onnx`` and ``model_quantized.onnx``, optimum's names): fused by ONNX Runtime's
transformer optimizer, the second with int8 weights. An export under an older name is refused with
the command that re-makes it.
``auto`` picks the fastest verified one for the device: a GPU gets torch bf16; a CPU that runs
bf16 natively gets torch bf16 for a checkpoint trained in bf16 (faster than the int8 export there,
at the same accuracy: bench/RESULTS.md, "Inference backends"); any other
CPU gets the int8 export when present, else the fp32 export, else torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from sentiment.layout import ONNX_DIR, ONNX_FILES, CheckpointError, ResolvedModel
from sentiment.precision import inference_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx-int8", "onnx")  # auto's order of preference on a CPU


class Backend(Protocol):
    """What :class:`~sentiment.predict.Predictor` needs from a backend."""

    name: str
    dtype: str  # what the matrix products run in: float32, bfloat16, int8 ...

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Raw logits (float32, one row per example) for a padded batch."""
        ...


class TorchBackend:
    """The Hugging Face model itself, in its weights' dtype (see :func:`sentiment.precision.inference_dtype`)."""

    name = "torch"

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        first = next(model.parameters())
        self.device, self.dtype = first.device, str(first.dtype).removeprefix("torch.")

    @torch.inference_mode()
    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits.float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session over one exported graph, on this process's CPU threads."""

    def __init__(self, name: str, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{path} cannot be loaded by ONNX Runtime: {reason}") from None
        self.name = name
        self.dtype = "int8" if name == "onnx-int8" else "float32"
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        ids = batch["input_ids"]
        feed = {k: (batch[k] if k in batch else torch.zeros_like(ids)).numpy().astype(np.int64) for k in self.inputs}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def choose_backend(requested: str, model: ResolvedModel, device: str) -> str:
    """The backend to run: ``requested``, or for ``auto`` the fastest verified one for ``device``.

    Raises:
        CheckpointError: an unknown backend, an ONNX backend on a GPU, or one the checkpoint has
            no verified export for, or one under an older file name (the message says how to make it).
    """
    if requested not in BACKENDS:
        raise CheckpointError(f"backend {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "auto":
        if device != "cpu" or inference_dtype(model.config.train.precision, device) == torch.bfloat16:
            return "torch"  # a GPU, or bf16 as the run was tested, on a CPU that runs it natively
        chosen = next((b for b in ONNX_BACKENDS if b in model.exports), "torch")
    else:
        chosen = requested
        if requested != "torch" and device != "cpu":
            raise CheckpointError(f"backend {requested!r} runs on CPU only; use torch (bf16) on a GPU")
    if chosen == "torch":
        return chosen
    make = f"python -m ray_jobs.export --checkpoint {model.reference}{' --int8' if chosen == 'onnx-int8' else ''}"
    if chosen not in model.exports:
        raise CheckpointError(f"backend {chosen!r}: {model.location} has no verified {chosen} export; make it with {make}")
    if model.exports[chosen]["file"] != ONNX_FILES[chosen]:
        raise CheckpointError(
            f"backend {chosen!r}: {model.location}/{ONNX_DIR}/{model.exports[chosen]['file']} is an export under an "
            f"older name (now {ONNX_DIR}/{ONNX_FILES[chosen]}, optimum's); re-make it with {make}"
        )
    return chosen


def onnx_backend(name: str, model: ResolvedModel, local: Path) -> OnnxBackend:
    """The session for export ``name`` of ``model``, from its local folder ``local``."""
    return OnnxBackend(name, local / ONNX_DIR / model.exports[name]["file"])
