"""bench.plain_server, the hand-written peer of the serving benchmark: same request and response shape
as the endpoint's /v1/predict, the same probabilities as the project's Predictor on a short review."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from bench.plain_server import make_app
from sentiment.predict import Predictor
from tests.support import make_checkpoint


def test_answers_v1s_shape_with_the_predictors_probabilities(tiny_model_dir, tmp_path):
    checkpoint = make_checkpoint(tiny_model_dir, tmp_path / "model")
    client = TestClient(make_app(checkpoint))
    assert client.get("/healthz").json() == {"status": "ok"}
    (got,) = client.post("/v1/predict", json={"text": "A slow but moving film."}).json()["predictions"]
    (expected,) = Predictor.load(checkpoint).predict_details(["A slow but moving film."])
    assert got["label"] == expected.label and got["score"] == pytest.approx(expected.score, abs=1e-5)
    assert got["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert client.post("/v1/predict", json={"texts": ["no"]}).status_code == 422  # one text per request, as documented
