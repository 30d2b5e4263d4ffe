"""sentiment.predict: Predictor loads a resolved checkpoint once and predicts as training tokenized."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment import predict as predict_module
from sentiment.layout import CALIBRATION_FILE, CheckpointError, resolve
from sentiment.metrics import softmax
from sentiment.predict import Encoded, Predictor, TextEncoder
from tests.support import make_checkpoint

ROOT = Path(__file__).resolve().parents[2]
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


def test_chunked_scoring_of_a_text_within_the_budget_equals_plain_scoring_exactly(checkpoint):
    plain, chunked = Predictor.load(checkpoint), Predictor.load(checkpoint, long_reviews="chunks")
    for text in (TEXTS[0], TEXTS[2]):
        np.testing.assert_array_equal(chunked.predict([text], return_proba=True), plain.predict([text], return_proba=True))
        assert vars(chunked.predict_details([text])[0]) == vars(plain.predict_details([text])[0])


def test_a_long_text_is_scored_whole_as_the_mean_of_its_windows_logits(checkpoint):
    predictor = Predictor.load(checkpoint, long_reviews="chunks")
    encoded = predictor.encode(TEXTS)
    assert encoded.counts.tolist()[0::2] == [1, 1] and encoded.counts[1] >= 4  # 40 sentences, 64-token windows
    long = [w for w, owner in zip(encoded.windows, encoded.owners) if owner == 1]
    alone = np.stack([predictor.logits_for_ids([w])[0] for w in long])  # each window in a batch of its own
    np.testing.assert_allclose(predictor.logits(encoded)[1], alone.mean(axis=0), atol=1e-5)
    details = predictor.predict_details(TEXTS)
    assert [(d.truncated, d.windows) for d in details] == [(False, 1), (False, int(encoded.counts[1])), (False, 1)]
    assert details[1].num_tokens == encoded.full_lengths[1] > 64  # every token seen, counted once


def test_texts_encoded_one_by_one_and_joined_score_as_encoded_together(checkpoint):
    predictor = Predictor.load(checkpoint, long_reviews="chunks")
    together = predictor.encode(TEXTS)
    joined = Encoded.join([predictor.encode([t]) for t in TEXTS])  # as a Serve replica batches them
    assert joined.windows == together.windows and joined.owners.tolist() == together.owners.tolist()
    assert [vars(d) for d in predictor.details(joined)] == [vars(d) for d in predictor.details(together)]


def test_split_is_the_inverse_of_join_and_a_text_encoder_encodes_as_the_predictor(checkpoint):
    predictor = Predictor.load(checkpoint, long_reviews="chunks")
    together = predictor.encode(TEXTS)
    parts = together.split()
    assert len(parts) == len(TEXTS) and any(len(p.windows) > 1 for p in parts)  # a long text keeps its windows
    rejoined = Encoded.join(parts)
    assert rejoined.windows == together.windows and rejoined.owners.tolist() == together.owners.tolist()
    assert rejoined.seen.tolist() == together.seen.tolist() and rejoined.full_lengths.tolist() == together.full_lengths.tolist()
    encoder = TextEncoder.load(resolve(checkpoint), "chunks")  # what the Serve ingress runs, without the model
    assert encoder.encode(TEXTS).windows == together.windows


def test_weights_changed_since_resolving_are_refused_at_load(checkpoint):
    resolved = resolve(checkpoint)
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: still a valid file, not the one checked
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Predictor.load(resolved)


def test_both_ways_in_one_pass_equal_each_way_alone(checkpoint):
    predictor = Predictor.load(checkpoint)
    encoded, chunked, truncated = predictor.chunked_and_truncated_logits(TEXTS)
    assert encoded.counts[1] > 1
    np.testing.assert_allclose(chunked, Predictor.load(checkpoint, long_reviews="chunks").logits(encoded), atol=1e-5)
    np.testing.assert_allclose(truncated, predictor.logits(predictor.encode(TEXTS)), atol=1e-5)
    np.testing.assert_array_equal(chunked[[0, 2]], truncated[[0, 2]])  # short texts: the same window, scored once
    assert np.abs(chunked[1] - truncated[1]).max() > 1e-4  # the long one: two different readings


def test_an_unknown_way_of_scoring_long_texts_is_refused(checkpoint):
    with pytest.raises(ValueError, match="long_reviews='middle': choose truncate or chunks"):
        Predictor.load(checkpoint, long_reviews="middle")


def test_a_saved_temperature_scales_the_probabilities(checkpoint):
    plain = Predictor.load(checkpoint)
    ids = plain.encode(TEXTS).windows
    logits = plain.logits_for_ids(ids)
    (checkpoint / CALIBRATION_FILE).write_text(json.dumps({"temperature": 2.5}))
    scaled = Predictor.load(checkpoint)
    assert scaled.temperature == 2.5
    np.testing.assert_allclose(scaled.predict(TEXTS, return_proba=True), softmax(logits / 2.5), atol=1e-6)
    (checkpoint / CALIBRATION_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(CheckpointError, match="temperature must be > 0"):
        Predictor.load(checkpoint)


def test_transformers_pipeline_on_the_folder_gives_the_predictors_labels_and_probabilities(checkpoint, small_imdb):
    from transformers import pipeline

    config = json.loads((checkpoint / "train_config.json").read_text())
    config["data"]["truncation"] = "head"  # what the tokenizer's own truncation keeps
    (checkpoint / "train_config.json").write_text(json.dumps(config))
    reviews = list(pd.read_parquet(small_imdb / "test.parquet")["text"][:32])  # IMDB's test split when $IMDB_DATA_DIR is set
    texts = [*reviews, " ".join(reviews)]  # and one longer than the 64-token training length
    ours = Predictor.load(checkpoint).predict_details(texts)
    classifier = pipeline("text-classification", model=str(checkpoint), top_k=None, truncation=True)
    theirs = classifier([re.sub(r"<br\s*/?>", " ", t, flags=re.IGNORECASE).strip() for t in texts])  # the card's recipe
    assert [max(t, key=lambda s: s["score"])["label"] for t in theirs] == [o.label for o in ours]
    got = np.array([[{s["label"]: s["score"] for s in t}[name] for name in ours[0].probabilities] for t in theirs])
    want = np.array([list(o.probabilities.values()) for o in ours])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert ours[-1].truncated and np.ptp(want[:, 1]) > 0.05  # a long text cut, outputs that vary text to text


def test_labels_that_disagree_with_the_weights_are_refused(checkpoint):
    config = json.loads((checkpoint / "train_config.json").read_text())
    config["model"]["label_names"] = ["negative", "neutral", "positive"]
    config["model"]["num_labels"] = 3
    (checkpoint / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model has 2 labels, config 3"):
        Predictor.load(checkpoint)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_a_bf16_trained_checkpoint_predicts_in_bf16_only_where_the_cpu_runs_it(tiny_model_dir, tmp_path, monkeypatch, native_bf16):
    from sentiment.config import load_config
    from sentiment.layout import CONFIG_FILE

    folder = make_checkpoint(tiny_model_dir, tmp_path / "model")
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64", "train.precision=bf16"])
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    fp32 = Predictor.load(make_checkpoint(tiny_model_dir, tmp_path / "fp32-model"))
    monkeypatch.setattr("sentiment.precision.cpu_has_fast_bf16", lambda: native_bf16)
    bf16 = Predictor.load(folder)
    assert fp32.backend.dtype == "float32"
    assert bf16.backend.dtype == ("bfloat16" if native_bf16 else "float32")
    got, want = bf16.predict(TEXTS, return_proba=True), fp32.predict(TEXTS, return_proba=True)
    if native_bf16:  # the same weights rounded to bf16: close, not equal
        assert not np.array_equal(got, want)
        np.testing.assert_allclose(got, want, atol=0.05)
    else:
        np.testing.assert_array_equal(got, want)


def test_a_multi_label_model_predicts_the_labels_above_their_thresholds(tiny_model_dir, tmp_path):
    import torch

    from sentiment.config import load_config
    from sentiment.metrics import sigmoid
    from sentiment.model import build_model, load_tokenizer
    from sentiment.model_folder import save_model_dir

    names = ["plot", "acting", "music"]
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=64", "model.problem_type=multi_label",
                             "model.num_labels=3", f"model.label_names={names}", "model.thresholds=[0.5, 0.3, 0.7]"])
    model = build_model(cfg.model)
    assert model.config.problem_type == "multi_label_classification"  # transformers' pipelines apply a sigmoid
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.ndim == 2):
            weight.normal_(0.0, 0.2)
    folder = save_model_dir(model, load_tokenizer(str(tiny_model_dir)), cfg, {}, tmp_path / "model")
    predictor = Predictor.load(folder)
    texts = [f"{word} review {i}" for i, word in enumerate(["great", "awful", "plot", "music", "fine", "dull"] * 4)]
    details = predictor.predict_details(texts)
    proba = predictor.predict(texts, return_proba=True)
    assert np.allclose(proba, sigmoid(np.asarray([d.logits for d in details])))  # one sigmoid per label
    assert not np.allclose(proba.sum(axis=1), 1.0)
    chosen = predictor.predict(texts)
    assert chosen == [[n for n, p, t in zip(names, row, (0.5, 0.3, 0.7)) if p > t] for row in proba]
    assert [d.labels for d in details] == chosen and len({tuple(c) for c in chosen}) > 1  # the texts differ
    assert all(d.label == names[int(np.argmax(row))] for d, row in zip(details, proba))
