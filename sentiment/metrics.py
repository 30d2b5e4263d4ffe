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


WEAK_F1 = 0.5  # a class whose F1 is under this is flagged in a run's final lines and in the report


def weak_classes(confusion: list[list[int]], label_names: list[str], floor: float = WEAK_F1) -> dict[str, str]:
    """The classes a model serves badly, each with why, from a confusion matrix (rows: true class,
    columns: predicted): a class never predicted, or one whose F1 is under ``floor`` (with its recall
    and the class most of its misses went to). Classes absent from the data are left out."""
    cm = np.asarray(confusion, dtype=np.int64)
    out: dict[str, str] = {}
    for i, name in enumerate(label_names):
        actual, predicted, hits = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        if actual == 0:
            continue
        if predicted == 0:
            out[name] = f"never predicted ({actual} of its reviews went to other classes)"
            continue
        f1 = 2 * hits / (actual + predicted)
        if f1 < floor:
            misses = cm[i].copy()
            misses[i] = -1
            out[name] = (f"F1 {f1:.2f}, recall {hits / actual:.0%}, most misses predicted "
                         f"{label_names[int(misses.argmax())]!r}")
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are plain numbers (what Ray, Tune and W&B charts take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
