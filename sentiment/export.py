"""ONNX export of a model folder, each variant verified before it is kept.

``fp32`` (backend ``onnx``): the model traced with dynamic batch and length by PyTorch's
TorchScript-based exporter, then fused by ONNX Runtime's transformer optimizer (attention,
embedding + LayerNorm, bias + GELU, skip + LayerNorm). The torch.export-based exporter (PyTorch's
default) gives a graph whose attention the optimizer does not fuse, hence the older one; attention
is exported from the eager implementation for the same reason. Kept only if its probabilities
equal torch's to ``FP32_TOLERANCE`` on the check reviews.

``int8`` (backend ``onnx-int8``): ONNX Runtime's dynamic quantization of the fused graph (int8
weights per output channel, activations quantized per batch). Kept only if its accuracy on the
check reviews is within ``INT8_MAX_DROP`` of the fp32 graph's. Settings are tried in
``INT8_RECIPES`` order, fastest first, and the first that passes is kept: 7-bit weights
(``reduce_range``, which keeps the int8 products clear of saturation) pass where 8-bit weights
lose accuracy (the variants measured: bench/RESULTS.md, "Inference backends").

The files carry optimum's names (``model.onnx``, ``model_quantized.onnx``) and its tensor names:
inputs ``input_ids``, ``attention_mask`` and, for a model with more than one token type (BERT,
MiniLM, ELECTRA; not RoBERTa or DistilBERT), ``token_type_ids``; output ``logits``. What each check
measured, and the inputs, are written to ``onnx/export.json`` beside the files; a variant that fails
is not written, and :class:`ExportError` says why.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sentiment.layout import EXPORT_FILE, ONNX_FILES
from sentiment.metrics import sigmoid, softmax
from sentiment.storage import write_local_json

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FP32_TOLERANCE = 1e-4
INT8_MAX_DROP = 0.005
MIN_CHECK_REVIEWS = 1000
# (name, quantize_dynamic settings): tried in order, the first within INT8_MAX_DROP is kept.
INT8_RECIPES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("per-channel, 7-bit weights", {"reduce_range": True}),
    ("per-channel, 7-bit weights, attention fp32", {"reduce_range": True, "op_types_to_quantize": ["MatMul"]}),
    ("per-channel, attention fp32", {"op_types_to_quantize": ["MatMul"]}),
)


class ExportError(ValueError):
    """A model that cannot be exported, or a variant that failed its check."""


@dataclass(frozen=True)
class CheckData:
    """Reviews to verify an export on: model-ready ids and their labels; a multi-label model's
    labels are multi-hot and its decisions use ``thresholds`` (one per label)."""

    ids: list[list[int]]
    labels: np.ndarray
    thresholds: np.ndarray | None = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """What the model's outputs mean: softmax, or one sigmoid per label."""
        logits = logits.astype(np.float64)
        return softmax(logits) if self.thresholds is None else sigmoid(logits)

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """The class of each review, or each review's label decisions."""
        return logits.argmax(1) if self.thresholds is None else self.probabilities(logits) > self.thresholds[None, :]

    def accuracy(self, logits: np.ndarray) -> float:
        """Share of right decisions: reviews classified right, or (multi-label) text-label
        decisions right (1 - Hamming loss)."""
        return float((self.decisions(logits) == np.asarray(self.labels)).mean())


def export_model(
    model_dir: Path, out: Path, check: CheckData, int8: bool, collate: Any, min_reviews: int = MIN_CHECK_REVIEWS
) -> dict[str, Any]:
    """Export the local model folder ``model_dir`` into the empty folder ``out`` (fp32, and int8
    with ``int8``), verifying each variant; writes and returns the ``export.json`` record.

    Raises:
        ExportError: too few check reviews, or fp32 failing its check (nothing is written). An
            int8 variant that fails is not written and its figures go to the record's ``rejected``.
    """
    if len(check.ids) < min_reviews:
        raise ExportError(f"the check needs >= {min_reviews} reviews of the validation split, got {len(check.ids)}")
    model = _load_eager(model_dir)
    reference = _torch_logits(model, check, collate)
    inputs = input_names(model.config)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        _trace(model, raw, inputs)
        fp32 = Path(scratch) / ONNX_FILES["onnx"]
        _fuse(raw, fp32, model.config)
        fp32_logits = _onnx_logits(fp32, check, collate)
        record: dict[str, Any] = {"exports": {}, "rejected": {}, "check_reviews": len(check.ids), "inputs": inputs}
        diff = float(np.abs(check.probabilities(fp32_logits) - check.probabilities(reference)).max())
        if diff > FP32_TOLERANCE:
            raise ExportError(f"the fp32 export's probabilities differ from torch's by {diff:.2e} (> {FP32_TOLERANCE}); not written")
        fp32_accuracy = check.accuracy(fp32_logits)
        record["exports"]["onnx"] = _entry(fp32, {"max_probability_diff_vs_torch": diff, "accuracy": fp32_accuracy,
                                                  "torch_accuracy": check.accuracy(reference)})
        if int8:
            _add_int8(record, fp32, fp32_logits, check, collate, Path(scratch))
        for entry in record["exports"].values():
            shutil.copy(Path(scratch) / entry["file"], out / entry["file"])
        write_local_json(out / EXPORT_FILE, record)
    return record


def _add_int8(record: dict[str, Any], fp32: Path, fp32_logits: np.ndarray, check: CheckData, collate: Any, scratch: Path) -> None:
    """Quantize with each recipe until one is within INT8_MAX_DROP of fp32; record it or the failures."""
    tried = []
    fp32_accuracy, fp32_decisions = check.accuracy(fp32_logits), check.decisions(fp32_logits)
    for name, settings in INT8_RECIPES:
        out = scratch / ONNX_FILES["onnx-int8"]
        _quantize(fp32, out, settings)
        logits = _onnx_logits(out, check, collate)
        accuracy = check.accuracy(logits)
        figures = {"recipe": name, "accuracy": accuracy, "fp32_accuracy": fp32_accuracy, "drop": fp32_accuracy - accuracy,
                   "label_agreement_vs_fp32": float((check.decisions(logits) == fp32_decisions).mean())}
        if fp32_accuracy - accuracy <= INT8_MAX_DROP:
            record["exports"]["onnx-int8"] = _entry(out, figures)
            return
        tried.append(figures)
    record["rejected"]["onnx-int8"] = tried


def _entry(file: Path, check: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return {"file": file.name, "sha256": digest, "bytes": file.stat().st_size, "check": check}


def _load_eager(model_dir: Path) -> PreTrainedModel:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True, attn_implementation="eager")
    return model.eval()


def input_names(config: Any) -> list[str]:
    """The graph's inputs for a model of ``config``, as optimum names them: ``token_type_ids`` only
    for a model with more than one token type."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if getattr(config, "type_vocab_size", 0) > 1 else [])


def _trace(model: torch.nn.Module, dest: Path, inputs: list[str]) -> None:
    example = {k: (torch.zeros if k == "token_type_ids" else torch.ones)(2, 8, dtype=torch.long) for k in inputs}
    axes = {k: {0: "batch", 1: "length"} for k in inputs} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(model, (), str(dest), kwargs=example, input_names=inputs, output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def _fuse(raw: Path, dest: Path, config: Any) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = config.model_type if config.model_type in ("bert", "roberta", "distilbert", "deberta") else "bert"
    fused = optimize_model(str(raw), model_type=model_type, num_heads=config.num_attention_heads,
                           hidden_size=config.hidden_size)
    fused.save_model_to_file(str(dest))


def _quantize(fp32: Path, dest: Path, settings: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **settings)


def _batches(check: CheckData, collate: Any, batch_size: int = 64):
    from sentiment.batching import eval_batches, iterate

    return iterate(check.ids, None, eval_batches([len(x) for x in check.ids], batch_size), collate)


@torch.inference_mode()
def _torch_logits(model: PreTrainedModel, check: CheckData, collate: Any) -> np.ndarray:
    rows: dict[int, np.ndarray] = {}  # batches come sorted by length
    for idx, batch in _batches(check, collate):
        rows.update(zip(idx, model(**batch).logits.float().numpy()))
    return np.stack([rows[i] for i in range(len(check.ids))])


def _onnx_logits(path: Path, check: CheckData, collate: Any) -> np.ndarray:
    from sentiment.backends import OnnxBackend

    backend = OnnxBackend(path.stem, path)
    parts = [(idx, backend.logits(batch)) for idx, batch in _batches(check, collate)]
    out = np.zeros((len(check.ids), parts[0][1].shape[1]), dtype=np.float32)
    for idx, logits in parts:
        out[idx] = logits
    return out
