"""sentiment.predict: Predictor loads a resolved checkpoint once and predicts as training tokenized."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sentiment import predict as predict_module
from sentiment.layout import CALIBRATION_FILE, CheckpointError, resolve
from sentiment.metrics import softmax
from sentiment.predict import Predictor
from tests.test_serve import make_checkpoint

TEXTS = ["A fun brain candy movie...good dialog.", "What a waste of time. " * 40, "bad"]


@pytest.fixture()
def checkpoint(tiny_model_dir, tmp_path):
    return make_checkpoint(tiny_model_dir, tmp_path / "model")


def test_a_resolved_checkpoint_is_not_resolved_again(checkpoint, monkeypatch):
    resolved = resolve(checkpoint)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("resolved twice")

    monkeypatch.setattr(predict_module, "resolve", refuse)
    predictor = Predictor.load(resolved)
    assert predictor.resolved is resolved and predictor.path == str(checkpoint)
    assert predictor.cfg.data.max_seq_length == 64 and predictor.metrics == {"val_accuracy": 0.5}


def test_details_report_tokens_and_truncation_truthfully(checkpoint):
    predictor = Predictor.load(checkpoint)
    details = predictor.predict_details(TEXTS)
    assert [d.truncated for d in details] == [False, True, False]
    assert details[1].num_tokens == 64 and details[2].num_tokens == 3  # [CLS] bad [SEP]
    proba = predictor.predict(TEXTS, return_proba=True)
    np.testing.assert_allclose([d.probabilities["positive"] for d in details], proba[:, 1], atol=1e-6)
    assert predictor.predict(TEXTS) == [d.label for d in details]


def test_a_saved_temperature_scales_the_probabilities(checkpoint):
    plain = Predictor.load(checkpoint)
    ids, _ = plain.encode(TEXTS)
    logits = plain.logits_for_ids(ids)
    (checkpoint / CALIBRATION_FILE).write_text(json.dumps({"temperature": 2.5}))
    scaled = Predictor.load(checkpoint)
    assert scaled.temperature == 2.5
    np.testing.assert_allclose(scaled.predict(TEXTS, return_proba=True), softmax(logits / 2.5), atol=1e-6)
    (checkpoint / CALIBRATION_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(CheckpointError, match="temperature must be > 0"):
        Predictor.load(checkpoint)


def test_labels_that_disagree_with_the_weights_are_refused(checkpoint):
    config = json.loads((checkpoint / "train_config.json").read_text())
    config["model"]["label_names"] = ["negative", "neutral", "positive"]
    config["model"]["num_labels"] = 3
    (checkpoint / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model has 2 labels, config 3"):
        Predictor.load(checkpoint)
