"""Classification metrics from logits and labels (scikit-learn underneath)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compute_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str], prefix: str = "") -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class F1, mean cross-entropy and the confusion matrix.

    Args:
        logits: ``(n, num_classes)`` raw scores.
        labels: ``(n,)`` class ids.
        label_names: names in class-id order (used for the per-class keys).
        prefix: prepended to every key, e.g. ``"val_"``.

    Returns:
        Scalar metrics keyed ``{prefix}accuracy`` etc., ``{prefix}f1_<label>`` per class,
        ``{prefix}count`` and ``{prefix}confusion_matrix`` (rows: true class, columns: predicted).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    classes = list(range(len(label_names)))
    preds = logits.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, labels=classes, average="macro", zero_division=0
    )
    _, _, per_class_f1, _ = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "loss": float(log_loss(labels, softmax(logits), labels=classes)),
        "count": int(len(labels)),
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }
    out.update({f"f1_{name}": float(v) for name, v in zip(label_names, per_class_f1)})
    return {prefix + k: v for k, v in out.items()}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are plain numbers (what Ray, Tune and W&B charts take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
