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


ATTRIBUTES = ["plot", "acting", "music"]


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_multi_label_metrics_by_hand_at_given_thresholds():
    # probabilities (sigmoid of the logits) against each label's threshold decide every label
    logits = logit(np.array([[0.9, 0.2, 0.6], [0.7, 0.8, 0.1], [0.1, 0.3, 0.4]]))
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0]])
    m = compute_metrics(logits, labels, ATTRIBUTES, prefix="test_", thresholds=[0.5, 0.5, 0.35])
    # decisions: [1,0,1], [1,1,0], [0,0,1]: text 3 misses acting and wrongly has music
    assert m["test_thresholds"] == [0.5, 0.5, 0.35]
    assert m["test_accuracy"] == pytest.approx(2 / 3)  # subset accuracy
    assert m["test_hamming_loss"] == pytest.approx(2 / 9)
    assert m["test_f1_plot"] == 1.0 and m["test_recall_acting"] == 0.5 and m["test_precision_music"] == 0.5
    assert m["test_micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # TP 4, FP 1, FN 1
    assert m["test_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3]))
    assert m["test_confusion_matrix"][1] == [[1, 0], [1, 1]]  # acting: tn fp / fn tp
    proba = 1 / (1 + np.exp(-logits))
    bce = -(labels * np.log(proba) + (1 - labels) * np.log(1 - proba)).mean()
    assert m["test_loss"] == pytest.approx(bce)


def test_thresholds_are_tuned_for_each_labels_best_f1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(400, 3))
    # label 0 well separated around 0.5; label 1's positives score low (best cut near 0.2); label 2 absent
    proba = np.where(labels == 1, 0.75, 0.25) + rng.normal(0, 0.05, size=labels.shape)
    proba[:, 1] = np.where(labels[:, 1] == 1, 0.3, 0.1) + rng.normal(0, 0.02, size=400)
    labels[:, 2] = 0
    m = compute_metrics(logit(proba), labels, ATTRIBUTES)
    assert 0.35 <= m["thresholds"][0] <= 0.65 and 0.1 < m["thresholds"][1] < 0.3 and m["thresholds"][2] == 0.5
    assert m["f1_plot"] == 1.0 and m["f1_acting"] == 1.0
    at_half = compute_metrics(logit(proba), labels, ATTRIBUTES, thresholds=[0.5] * 3)
    assert at_half["f1_acting"] == 0.0  # what an untuned 0.5 would have given


def test_weak_labels_are_flagged_from_the_per_label_matrices():
    per_label = [[[5, 0], [0, 5]], [[8, 0], [2, 0]], [[2, 4], [3, 1]], [[10, 0], [0, 0]]]
    weak = weak_classes(per_label, ["fine", "never", "poor", "absent"])
    assert weak == {"never": "never predicted (2 texts have it)", "poor": "F1 0.22, recall 25%, precision 20%"}
