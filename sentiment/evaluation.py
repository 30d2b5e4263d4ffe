"""Evaluation metrics for a set of predictions: quality, calibration and where the model fails.

Everything here works on plain arrays (logits, labels, token counts), so it is the same for a
test split scored by Ray Data, a file of predictions, or numbers made up in a test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from sentiment.metrics import compute_metrics, sigmoid, softmax, weak_classes

# Review-length buckets, in tokens (special tokens included): [0,128), [128,256) ... [1024, inf).
LENGTH_EDGES = (0, 128, 256, 384, 512, 768, 1024)
CALIBRATION_BINS = 15


def bucket_label(lo: int, hi: float) -> str:
    """Readable name of a token-length bucket: ``128-255`` or ``1024+``."""
    return f"{lo}+" if hi == np.inf else f"{lo}-{int(hi) - 1}"


def calibration_bins(proba: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins over the top-class probability (the reliability diagram's data).

    Returns:
        One dict per non-empty bin: ``lo``, ``hi``, ``count``, mean ``confidence``, ``accuracy``.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(mask.sum()),
                         "confidence": float(confidence[mask].mean()), "accuracy": float(correct[mask].mean())})
    return bins


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    bins = calibration_bins(proba, labels, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimizing the log loss of ``softmax(logits / T)`` (Guo et al., 2017).

    Dividing by one positive number never changes the predicted class, only the confidence.
    """
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, labels]))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def by_length(correct: np.ndarray, num_tokens: np.ndarray, edges: tuple[int, ...] = LENGTH_EDGES) -> list[dict[str, Any]]:
    """Accuracy per review-length bucket (non-empty buckets only)."""
    bounds = list(zip(edges, [*edges[1:], np.inf]))
    out = []
    for lo, hi in bounds:
        mask = (num_tokens >= lo) & (num_tokens < hi)
        if mask.any():
            out.append({"bucket": bucket_label(lo, hi), "lo": lo, "count": int(mask.sum()),
                        "accuracy": float(correct[mask].mean())})
    return out


def by_fit(correct: np.ndarray, long: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy of reviews within the model's length and of the longer ones (cut or chunked)."""
    out = {}
    for name, mask in (("within", ~long), ("longer", long)):
        out[name] = {"count": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")}
    return out


def roc_auc(proba: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: of the second class's probability for two classes, one-vs-rest macro otherwise.

    NaN when only one class is present (AUC is undefined).
    """
    if len(np.unique(labels)) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(labels, proba[:, 1]))
    return float(roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=list(range(proba.shape[1]))))


def evaluate_predictions(
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    num_tokens: np.ndarray,
    long: np.ndarray,
    temperature: float | None = None,
    truncated_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of the evaluation report.

    Args:
        logits: ``(n, classes)`` raw model outputs.
        labels: ``(n,)`` true class ids.
        label_names: class names in id order.
        num_tokens: each review's full length in tokens (before truncation, specials included).
        long: whether each review is longer than the model's length (cut, or scored in chunks).
        temperature: a fitted temperature; adds ``calibrated`` (log loss, ECE, bins after scaling).
        truncated_logits: when ``logits`` come from chunked scoring, the truncated window's logits;
            adds ``truncated_scoring`` (its ``accuracy``, ``by_length`` and ``by_fit``) to compare.

    Returns:
        ``accuracy``, macro ``precision``/``recall``/``f1``, ``per_class`` (precision, recall, F1,
        support), ``weak_classes`` (name: why, :func:`sentiment.metrics.weak_classes`),
        ``confusion_matrix`` (rows true, columns predicted), ``roc_auc``, ``log_loss``,
        ``ece`` and ``reliability`` bins, ``by_length``, ``by_fit``, ``count``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    long = np.asarray(long, dtype=bool)
    base = compute_metrics(logits, labels, label_names)
    proba = softmax(logits)
    correct = proba.argmax(axis=1) == labels
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, proba.argmax(axis=1), labels=list(range(len(label_names))), zero_division=0
    )
    out: dict[str, Any] = {
        "count": base["count"],
        "accuracy": base["accuracy"],
        "precision": base["precision"],
        "recall": base["recall"],
        "f1": base["f1"],
        "log_loss": base["loss"],
        "roc_auc": roc_auc(proba, labels),
        "ece": expected_calibration_error(proba, labels),
        "confusion_matrix": base["confusion_matrix"],
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
        },
        "weak_classes": weak_classes(base["confusion_matrix"], label_names),
        "reliability": calibration_bins(proba, labels),
        "by_length": by_length(correct, np.asarray(num_tokens)),
        "by_fit": by_fit(correct, long),
    }
    if truncated_logits is not None:
        plain_correct = np.asarray(truncated_logits).argmax(axis=1) == labels
        out["truncated_scoring"] = {"accuracy": float(plain_correct.mean()),
                                    "by_length": by_length(plain_correct, np.asarray(num_tokens)),
                                    "by_fit": by_fit(plain_correct, long)}
    if temperature is not None:
        scaled = compute_metrics(logits / temperature, labels, label_names)
        scaled_proba = softmax(logits / temperature)
        out["calibrated"] = {
            "temperature": float(temperature),
            "log_loss": scaled["loss"],
            "ece": expected_calibration_error(scaled_proba, labels),
            "reliability": calibration_bins(scaled_proba, labels),
        }
    return out


def decision_view(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label model's every text-label decision as a two-class prediction: ``(n * k, 2)``
    probabilities (without, with the label) and ``(n * k,)`` truths, for the calibration figures."""
    flat = proba.reshape(-1)
    return np.stack([1 - flat, flat], axis=1), labels.reshape(-1).astype(np.int64)


def evaluate_multi_label(
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    thresholds: list[float],
    num_tokens: np.ndarray,
    long: np.ndarray,
    truncated_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of a multi-label model's evaluation report; the arguments as
    :func:`evaluate_predictions`'s, with ``(n, k)`` multi-hot ``labels`` and each label's decision
    ``thresholds`` (the model's own).

    Returns:
        :func:`sentiment.metrics.multi_label_metrics`'s (``accuracy`` is subset accuracy, ``f1``
        macro, ``micro_f1``, ``hamming_loss``, ``thresholds``, per-label ``confusion_matrix``) with
        ``log_loss`` (mean binary cross-entropy), ``roc_auc`` (macro over the labels both present and
        absent), ``per_class`` (per label: precision, recall, F1, support, ROC AUC, threshold),
        ``weak_classes``; ``ece`` and ``reliability`` over every text-label decision; ``by_length`` and
        ``by_fit`` of subset accuracy; ``count``.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    base = compute_metrics(logits, labels, label_names, thresholds=thresholds)
    proba = sigmoid(logits)
    correct = ((proba > np.asarray(thresholds)[None, :]) == labels).all(axis=1)
    aucs = [float(roc_auc_score(labels[:, j], proba[:, j])) if 0 < labels[:, j].sum() < len(labels) else float("nan")
            for j in range(labels.shape[1])]
    pairs, truth = decision_view(proba, labels)
    out: dict[str, Any] = {k: base[k] for k in ("count", "accuracy", "precision", "recall", "f1", "micro_f1", "hamming_loss",
                                               "thresholds", "confusion_matrix")}
    out |= {
        "log_loss": base["loss"],
        "roc_auc": float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan"),
        "ece": expected_calibration_error(pairs, truth),
        "per_class": {
            name: {"precision": base[f"precision_{name}"], "recall": base[f"recall_{name}"], "f1": base[f"f1_{name}"],
                   "support": int(labels[:, j].sum()), "roc_auc": aucs[j], "threshold": thresholds[j]}
            for j, name in enumerate(label_names)
        },
        "weak_classes": weak_classes(base["confusion_matrix"], label_names),
        "reliability": calibration_bins(pairs, truth),
        "by_length": by_length(correct, np.asarray(num_tokens)),
        "by_fit": by_fit(correct, np.asarray(long, dtype=bool)),
    }
    if truncated_logits is not None:
        plain = ((sigmoid(truncated_logits) > np.asarray(thresholds)[None, :]) == labels).all(axis=1)
        out["truncated_scoring"] = {"accuracy": float(plain.mean()), "by_length": by_length(plain, np.asarray(num_tokens)),
                                    "by_fit": by_fit(plain, np.asarray(long, dtype=bool))}
    return out


def confident_mistakes(proba: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` wrong predictions made with the highest confidence, most confident first."""
    wrong = np.flatnonzero(proba.argmax(axis=1) != labels)
    return wrong[np.argsort(-proba[wrong].max(axis=1), kind="stable")][:k]


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics (for W&B's summary and the report's first table)."""
    keys = ("accuracy", "precision", "recall", "f1", "micro_f1", "hamming_loss", "roc_auc", "log_loss", "ece", "count")
    out = {k: metrics[k] for k in keys if k in metrics}
    for name, cls in metrics["per_class"].items():
        out.update({f"{m}_{name}": cls[m] for m in ("precision", "recall", "f1")})
    if "calibrated" in metrics:
        out.update({f"calibrated_{k}": metrics["calibrated"][k] for k in ("temperature", "log_loss", "ece")})
    return out
