import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_score, recall_score

from sentiment.metrics import compute_metrics, softmax, weak_classes

NAMES = ["negative", "positive"]


def test_hand_computed_case():
    # preds: 1, 1, 0, 0, 1 ; labels: 1, 0, 0, 1, 1 -> TP=2 FP=1 TN=1 FN=1
    logits = np.array([[0, 2], [0, 1], [3, 0], [1, 0], [0, 5]], dtype=float)
    m = compute_metrics(logits, np.array([1, 0, 0, 1, 1]), NAMES, prefix="val_")
    assert m["val_accuracy"] == pytest.approx(3 / 5)
    assert m["val_confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["val_f1_positive"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["val_f1_negative"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert m["val_count"] == 5


@pytest.mark.parametrize("k", [2, 3])
def test_against_sklearn_on_random_predictions(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(500, k)) * 3
    labels = rng.integers(0, k, size=500)
    names = [f"c{i}" for i in range(k)]
    m = compute_metrics(logits, labels, names)
    preds = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["precision"] == pytest.approx(precision_score(labels, preds, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(labels, preds, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["loss"] == pytest.approx(log_loss(labels, softmax(logits)))
    assert m["confusion_matrix"] == confusion_matrix(labels, preds).tolist()


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0) and p[1].tolist() == [0.5, 0.5]


def test_weak_classes_names_the_never_predicted_and_the_poor_with_where_their_misses_went():
    names = ["low", "mid", "high"]
    cm = [[80, 15, 5],   # low: F1 2*80/(100+100) = 0.80
          [20, 10, 30],  # mid: F1 2*10/(60+40) = 0.20, most misses predicted high
          [0, 15, 85]]   # high: F1 2*85/(100+120) = 0.77
    assert weak_classes(cm, names) == {"mid": "F1 0.20, recall 17%, most misses predicted 'high'"}
    assert weak_classes(cm, names, floor=0.78) == {
        "mid": "F1 0.20, recall 17%, most misses predicted 'high'",
        "high": "F1 0.77, recall 85%, most misses predicted 'mid'",
    }
    never = [[50, 0, 0], [30, 0, 10], [0, 0, 0]]  # mid never predicted; high absent from the data
    assert weak_classes(never, names) == {"mid": "never predicted (40 of its reviews went to other classes)"}
    assert weak_classes([[50, 0], [0, 50]], ["negative", "positive"]) == {}
