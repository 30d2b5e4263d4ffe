"""Evaluation metrics against scikit-learn and hand computations on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from sentiment.evaluation import (
    by_fit,
    by_length,
    calibration_bins,
    confident_mistakes,
    evaluate_predictions,
    expected_calibration_error,
    fit_temperature,
    headline,
)
from sentiment.metrics import softmax

NAMES = ["negative", "positive"]


@pytest.fixture
def fixed():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500)
    logits = rng.normal(0, 1, (500, 2)) + 1.5 * np.eye(2)[labels]  # informative, imperfect
    tokens = rng.integers(20, 1500, 500)
    return logits, labels, tokens, tokens > 512


def test_metrics_equal_scikit_learn(fixed):
    logits, labels, tokens, cut = fixed
    m = evaluate_predictions(logits, labels, NAMES, tokens, cut)
    preds, proba = logits.argmax(1), softmax(logits)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["precision"] == pytest.approx(precision_score(labels, preds, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(labels, preds, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, proba[:, 1]))
    assert m["log_loss"] == pytest.approx(log_loss(labels, proba))
    assert m["confusion_matrix"] == confusion_matrix(labels, preds).tolist()
    for i, name in enumerate(NAMES):
        assert m["per_class"][name]["precision"] == pytest.approx(precision_score(labels, preds, pos_label=i))
        assert m["per_class"][name]["recall"] == pytest.approx(recall_score(labels, preds, pos_label=i))
        assert m["per_class"][name]["support"] == int((labels == i).sum())
    assert m["count"] == 500 and "calibrated" not in m


def test_multiclass_auc_is_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    logits = rng.normal(0, 1, (300, 3)) + np.eye(3)[labels]
    m = evaluate_predictions(logits, labels, ["a", "b", "c"], np.full(300, 100), np.zeros(300, bool))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, softmax(logits), multi_class="ovr"))


def test_ece_by_hand():
    # two bins used: confidence 0.6 (2 reviews, 1 right) and 0.9 (2 reviews, 2 right)
    proba = np.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    bins = calibration_bins(proba, labels, n_bins=10)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 0.5), (2, 1.0)]
    assert expected_calibration_error(proba, labels, n_bins=10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)


def test_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 2))
    true_t = 2.5  # labels drawn from softmax(logits / 2.5): the model is over-confident by 2.5x
    labels = (rng.random(20_000) < softmax(logits / true_t)[:, 1]).astype(int)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    m = evaluate_predictions(logits, labels, NAMES, np.full(20_000, 100), np.zeros(20_000, bool), temperature=t)
    assert m["calibrated"]["log_loss"] < m["log_loss"] and m["calibrated"]["ece"] < m["ece"]


def test_accuracy_by_length_and_truncation():
    correct = np.array([1, 0, 1, 1, 0, 1], bool)
    tokens = np.array([10, 100, 130, 300, 600, 2000])
    buckets = by_length(correct, tokens)
    assert [(b["bucket"], b["count"], b["accuracy"]) for b in buckets] == [
        ("0-127", 2, 0.5), ("128-255", 1, 1.0), ("256-383", 1, 1.0), ("512-767", 1, 0.0), ("1024+", 1, 1.0),
    ]
    cut = by_fit(correct, tokens > 256)
    assert cut["within"] == {"count": 3, "accuracy": pytest.approx(2 / 3)}
    assert cut["longer"] == {"count": 3, "accuracy": pytest.approx(2 / 3)}


def test_confident_mistakes_are_the_wrong_ones_most_confident_first():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.99, 0.01], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([1, 1, 1, 0, 0])  # wrong: 0 (0.9), 2 (0.99), 4 (0.7)
    assert confident_mistakes(proba, labels, k=2).tolist() == [2, 0]


def test_headline_holds_the_scalars(fixed):
    logits, labels, tokens, cut = fixed
    h = headline(evaluate_predictions(logits, labels, NAMES, tokens, cut, temperature=1.3))
    assert {"accuracy", "roc_auc", "ece", "f1_positive", "recall_negative", "calibrated_temperature"} <= set(h)
    assert all(isinstance(v, (int, float)) for v in h.values())


def test_multi_label_evaluation_against_sklearn():
    from sklearn.metrics import roc_auc_score

    from sentiment.evaluation import evaluate_multi_label
    from sentiment.metrics import sigmoid

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, (400, 3))
    labels[:, 2] = 1  # always present: no AUC for it, left out of the macro mean
    logits = rng.normal(0, 1.0, (400, 3)) + np.where(labels == 1, 1.0, -1.0)
    tokens = np.where(np.arange(400) < 100, 500, 100)
    m = evaluate_multi_label(logits, labels, ["a", "b", "c"], [0.5, 0.6, 0.5], tokens, tokens > 256)
    proba = sigmoid(logits)
    aucs = [roc_auc_score(labels[:, j], proba[:, j]) for j in (0, 1)]
    assert m["roc_auc"] == pytest.approx(np.mean(aucs)) and np.isnan(m["per_class"]["c"]["roc_auc"])
    right = ((proba > [0.5, 0.6, 0.5]) == labels).all(axis=1)
    assert m["accuracy"] == pytest.approx(right.mean())
    assert m["by_fit"]["longer"] == {"count": 100, "accuracy": pytest.approx(right[:100].mean())}
    assert m["per_class"]["b"]["support"] == labels[:, 1].sum() and m["thresholds"] == [0.5, 0.6, 0.5]
    assert sum(b["count"] for b in m["reliability"]) == 1200  # every text-label decision
