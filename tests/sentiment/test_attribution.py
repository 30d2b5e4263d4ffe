"""Word attributions: subword merging, and integrated gradients' completeness on a real (tiny) BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sentiment.attribution import explain, token_attributions, top_words, words_of
from sentiment.predict import Predictor
from sentiment.report import SCENARIOS
from tests.support import TEXTS, make_checkpoint


@pytest.fixture(scope="module")
def predictor(tiny_model_dir, tmp_path_factory) -> Predictor:
    return Predictor.load(make_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("attr") / "model"))


def test_wordpieces_merge_into_words_and_specials_and_punctuation_drop():
    tokens = ["[CLS]", "Not", "fan", "##tastic", ",", "isn", "'", "t", "it", "[SEP]"]
    special = np.array([t.startswith("[") for t in tokens])
    assert words_of(tokens, np.arange(10.0), special) == [
        ("not", 1.0), ("fantastic", 5.0), ("isn't", 18.0), ("it", 8.0),
    ]


def test_sentencepiece_marks_word_starts():
    tokens = ["▁Fan", "tastic", "▁film", "!"]
    assert words_of(tokens, np.ones(4), np.zeros(4, bool)) == [("fantastic", 2.0), ("film", 2.0)]


def test_integrated_gradients_are_complete(predictor):
    """Per review, the attributions add up to logit(review) - logit(baseline) (IG's completeness)."""
    ids = predictor.encode(TEXTS).windows
    scores = token_attributions(predictor, ids, target=1, n_steps=128)
    specials = torch.tensor(sorted(set(predictor.tokenizer.all_special_ids)))
    pad = predictor.tokenizer.pad_token_id
    for review, attr in zip(ids, scores):
        x = torch.tensor([review])
        base = torch.where(torch.isin(x, specials), x, pad)
        with torch.no_grad():
            gap = (predictor.model(input_ids=x).logits - predictor.model(input_ids=base).logits)[0, 1].item()
        assert len(attr) == len(review)
        assert attr.sum() == pytest.approx(gap, abs=0.02 + 0.02 * abs(gap))
    assert any(abs(a.sum()) > 0.05 for a in scores)  # the check above is not trivially 0 == 0


def test_top_words_are_ranked_and_counted(predictor):
    texts = TEXTS * 3
    words = top_words(predictor, texts, target=1, top_k=4, min_count=3, n_steps=8)
    pos, neg = words["positive"], words["negative"]
    assert 0 < len(pos) <= 4 and 0 < len(neg) <= 4
    assert [w.score for w in pos] == sorted((w.score for w in pos), reverse=True)
    assert [w.score for w in neg] == sorted(w.score for w in neg)
    assert all(w.count >= 3 for w in pos + neg)


def test_one_target_per_review_equals_attributing_each_review_alone(predictor):
    ids = predictor.encode(TEXTS[:3]).windows
    together = token_attributions(predictor, ids, target=[1, 0, 1], n_steps=8)
    for review, target, scores in zip(ids, [1, 0, 1], together):
        (alone,) = token_attributions(predictor, [review], target=target, n_steps=8)
        np.testing.assert_allclose(scores, alone, atol=1e-5)


def test_each_seed_scenario_is_explained_by_words_of_its_own_text(predictor):
    texts = [text for text, _ in SCENARIOS]
    explained = explain(predictor, texts, top_k=3, n_steps=8)
    assert [p.label for p in explained] == predictor.predict(texts)  # the same predictions, plus key tokens
    for text, prediction in zip(texts, explained):
        words = {w.strip(".,!").lower() for w in text.split()}
        assert 0 < len(prediction.key_tokens) <= 3
        assert all(k.word in words and k.score > 0 for k in prediction.key_tokens), prediction.key_tokens
        assert [k.score for k in prediction.key_tokens] == sorted((k.score for k in prediction.key_tokens), reverse=True)


def test_a_long_review_in_chunks_is_explained_by_all_its_windows(predictor):
    """IG is linear in the function: the mean logit of k windows gets 1/k of each window's attributions."""
    chunked = Predictor.load(predictor.path, long_reviews="chunks")
    text = "The first half is dull and slow. " * 12 + "But the ending is wonderful, moving and brilliant. " * 10
    encoded = chunked.encode([text])
    assert encoded.counts[0] >= 3
    (explained,) = explain(chunked, [text], top_k=50, n_steps=8)
    assert vars(chunked.predict_details([text])[0]) == {**vars(explained), "key_tokens": None}
    target = chunked.label_names.index(explained.label)
    per_window = token_attributions(chunked, encoded.windows, target, n_steps=8)
    words = {k.word: k.score for k in explained.key_tokens}
    checked = [w for w in ("dull", "slow", "wonderful", "moving") if w in words]  # whole words, single tokens
    assert checked
    for word in checked:
        expected = sum(s[np.asarray(w) == chunked.tokenizer.convert_tokens_to_ids(word)].sum() for w, s in zip(encoded.windows, per_window))
        assert words[word] == pytest.approx(expected / encoded.counts[0], abs=2e-4)
    assert words and all(w in text.lower() for w in words)
