"""Classification metrics from logits and labels (scikit-learn underneath)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    hamming_loss,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)

# Where each label's decision threshold is looked for on the validation split (multi-label).
THRESHOLD_GRID = np.round(np.linspace(0.05, 0.95, 19), 2)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, stable for large logits (a multi-label model's probabilities)."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -logits))


def tune_thresholds(proba: np.ndarray, labels: np.ndarray) -> list[float]:
    """Each label's decision threshold: the :data:`THRESHOLD_GRID` point whose F1 on these
    ``(n, num_labels)`` probabilities and multi-hot labels is highest (ties: the one nearest 0.5;
    a label no text has keeps 0.5)."""
    out = []
    for j in range(labels.shape[1]):
        truth = labels[:, j].astype(bool)
        if not truth.any():
            out.append(0.5)
            continue
        predicted = proba[:, j][None, :] > THRESHOLD_GRID[:, None]
        hits = (predicted & truth).sum(axis=1)
        f1 = 2 * hits / (predicted.sum(axis=1) + truth.sum())
        best = np.flatnonzero(f1 == f1.max())
        out.append(float(THRESHOLD_GRID[best[np.argmin(np.abs(THRESHOLD_GRID[best] - 0.5))]]))
    return out


def compute_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str], prefix: str = "",
                    thresholds: list[float] | None = None) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class F1, mean cross-entropy and the confusion matrix;
    for multi-hot ``(n, num_labels)`` labels, :func:`multi_label_metrics`.

    Args:
        logits: ``(n, num_classes)`` raw scores.
        labels: ``(n,)`` class ids, or ``(n, num_labels)`` multi-hot.
        label_names: names in class-id order (used for the per-class keys).
        prefix: prepended to every key, e.g. ``"val_"``.
        thresholds: multi-label only: each label's decision threshold (None: tuned on these labels).

    Returns:
        Scalar metrics keyed ``{prefix}accuracy`` etc., ``{prefix}f1_<label>`` per class,
        ``{prefix}count`` and ``{prefix}confusion_matrix`` (rows: true class, columns: predicted).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return multi_label_metrics(logits, labels, label_names, prefix, thresholds)
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


def multi_label_metrics(logits: np.ndarray, labels: np.ndarray, label_names: list[str], prefix: str = "",
                        thresholds: list[float] | None = None) -> dict[str, Any]:
    """A multi-label model's metrics: each label predicted where its sigmoid probability exceeds its
    threshold (``thresholds``, or each tuned here for the best F1: :func:`tune_thresholds`).

    Returns:
        ``{prefix}``-keyed: ``accuracy`` (subset accuracy: every label of a text right), ``f1``,
        ``precision``, ``recall`` (macro over labels), ``micro_f1`` (over every text-label decision),
        ``hamming_loss`` (the share of wrong decisions), ``loss`` (mean binary cross-entropy),
        ``f1_<label>``, ``precision_<label>``, ``recall_<label>``, ``count``, ``thresholds`` (the
        ones used) and ``confusion_matrix`` (per label ``[[tn, fp], [fn, tp]]``).
    """
    proba = sigmoid(logits)
    used = tune_thresholds(proba, labels) if thresholds is None else [float(t) for t in thresholds]
    preds = (proba > np.asarray(used)[None, :]).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    per_p, per_r, per_f1, _ = precision_recall_fscore_support(labels, preds, average=None, zero_division=0)
    _, _, micro_f1, _ = precision_recall_fscore_support(labels, preds, average="micro", zero_division=0)
    bce = -(labels * np.log(np.clip(proba, 1e-15, 1)) + (1 - labels) * np.log(np.clip(1 - proba, 1e-15, 1)))
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "micro_f1": float(micro_f1),
        "hamming_loss": float(hamming_loss(labels, preds)),
        "loss": float(bce.mean()),
        "count": int(len(labels)),
        "thresholds": used,
        "confusion_matrix": multilabel_confusion_matrix(labels, preds).tolist(),
    }
    for name, p, r, f in zip(label_names, per_p, per_r, per_f1):
        out |= {f"f1_{name}": float(f), f"precision_{name}": float(p), f"recall_{name}": float(r)}
    return {prefix + k: v for k, v in out.items()}


WEAK_F1 = 0.5  # a class whose F1 is under this is flagged in a run's final lines and in the report


def weak_classes(confusion: list[list[int]], label_names: list[str], floor: float = WEAK_F1) -> dict[str, str]:
    """The classes a model serves badly, each with why, from a confusion matrix (rows: true class,
    columns: predicted): a class never predicted, or one whose F1 is under ``floor`` (with its recall
    and the class most of its misses went to). Classes absent from the data are left out. A
    multi-label model's per-label matrices (``[[tn, fp], [fn, tp]]`` each) flag labels the same way."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim == 3:
        return _weak_labels(cm, label_names, floor)
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


def _weak_labels(per_label: np.ndarray, label_names: list[str], floor: float) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, ((_, fp), (fn, tp)) in zip(label_names, per_label.tolist()):
        if tp + fn == 0:
            continue
        if tp + fp == 0:
            out[name] = f"never predicted ({tp + fn} texts have it)"
        elif (f1 := 2 * tp / (2 * tp + fp + fn)) < floor:
            out[name] = f"F1 {f1:.2f}, recall {tp / (tp + fn):.0%}, precision {tp / (tp + fp):.0%}"
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are plain numbers (what Ray, Tune and W&B charts take)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
