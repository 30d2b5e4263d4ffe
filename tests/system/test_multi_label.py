"""Multi-label models end to end on one trained run: a learnable synthetic task (three labels cued by
words, any subset per text, none included) on which ``python -m ray_jobs.train`` fine-tunes the
packaged MiniLM with ``model.problem_type=multi_label``; then ``Predictor``, ``ray_jobs.evaluate``
(report and W&B), ``ray_jobs.predict`` (Ray Data, CSV out), ``ray_jobs.export`` (ONNX verified on
label decisions) and Serve (``/v1/predict``, TEI's ``/predict``, the v2 ``infer``) on its best
checkpoint; a multi-label model refused as a distillation teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from ray_jobs import evaluate, export, train
from ray_jobs import predict as batch_predict
from sentiment.config import ConfigError
from sentiment.layout import CONFIG_FILE
from sentiment.metrics import sigmoid
from sentiment.predict import Predictor
from sentiment.report import TITLES
from tests.support import start_serve, stop_serve
from tests.wandb_log import logged_keys

pytestmark = pytest.mark.ray

NAMES = ["plot", "acting", "music"]
CUES = {"plot": "story twist", "acting": "performance cast", "music": "soundtrack score"}
SHARE = {"plot": 0.5, "acting": 0.25, "music": 0.4}  # acting is imbalanced: its positives get a pos_weight
FILLER = ["film", "movie", "scene", "evening", "watched", "friends", "long", "night", "seat", "screen"]


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """``n`` texts of 12 words: the cue words of each of their labels (any subset), twice, and filler."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        labels = [name for name in NAMES if rng.random() < SHARE[name]]
        cues = [w for name in labels for w in CUES[name].split() * 2]
        words = cues + list(rng.choice(FILLER, size=12 - len(cues)))  # one length: batches by length mix label sets
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels})
    return pd.DataFrame(rows)


def decided(texts: list[str]) -> list[list[str]]:
    """What a text's cue words say its labels are."""
    return [[name for name in NAMES if CUES[name].split()[0] in text] for text in texts]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multi-label-data")
    synthetic(480, 0).to_parquet(folder / "train.parquet")
    synthetic(96, 1).to_parquet(folder / "test.parquet")
    return folder


@pytest.fixture(scope="module")
def trained(local_ray, data, tmp_path_factory):
    """The CLI's run of the packaged MiniLM (a tiny random BERT gets stuck on some label from some
    seeds): ``(printed lines, result.json, the best model folder)``."""
    import contextlib
    import io

    storage = tmp_path_factory.mktemp("multi-label-runs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main([
            f"data.path={data}", "model.problem_type=multi_label",
            "model.num_labels=3", f"model.label_names={NAMES}", "run.metric=val_micro_f1", "data.max_seq_length=32",
            "data.validation_fraction=0.25", "train.epochs=3", "train.batch_size=16", "train.lr=2e-4", "train.log_every_steps=60",
            "scaling.num_workers=1", "tracking.mode=offline", "run.max_failures=0", f"run.storage_path={storage}",
            "run.name=labels",
        ])
    result = json.loads((storage / "labels" / "result.json").read_text())
    return printed.getvalue(), result, Path(result["best_checkpoint"]) / "model"


def test_training_learns_every_label_and_saves_its_tuned_thresholds(trained):
    printed, result, model = trained
    test = result["test_metrics"]
    assert test["test_micro_f1"] >= 0.9 and test["test_f1"] >= 0.85, test
    assert all(test[f"test_f1_{name}"] >= 0.8 for name in NAMES), test
    assert test["test_hamming_loss"] <= 0.1 and test["test_count"] == 96
    assert "label positive weights on" in printed and "acting" in printed  # the imbalanced label, weighed
    assert f"test micro F1: {test['test_micro_f1']:.4f} on 96 held-out texts" in printed
    saved = json.loads((model / CONFIG_FILE).read_text())["model"]
    assert saved["problem_type"] == "multi_label" and len(saved["thresholds"]) == 3
    assert all(0 < t < 1 for t in saved["thresholds"])
    assert test["test_thresholds"] == saved["thresholds"]  # the test decided with the thresholds tuned on validation
    assert json.loads((model / "config.json").read_text())["problem_type"] == "multi_label_classification"


def test_predictor_gives_each_text_its_labels(trained):
    *_, model = trained
    texts = synthetic(40, 2)["text"].tolist()
    predictor = Predictor.load(model)
    got = predictor.predict(texts)
    assert np.mean([g == want for g, want in zip(got, decided(texts))]) >= 0.9, list(zip(got, decided(texts)))
    every = " ".join(CUES[name] for name in NAMES)
    assert predictor.predict(["a long night at the movie", f"{every} {every}"]) == [[], NAMES]
    proba = predictor.predict(texts, return_proba=True)
    assert proba.shape == (40, 3) and got == [[n for n, p, t in zip(NAMES, row, predictor.thresholds) if p > t] for row in proba]


def test_a_multi_label_model_teaches_no_single_label_student(trained, tiny_model_dir, data, tmp_path):
    *_, model = trained
    with pytest.raises(ConfigError, match="is a multi-label model; distillation needs a single-label teacher"):
        train.main([f"model.name_or_path={tiny_model_dir}", f"data.path={data}", "data.max_seq_length=32", "model.num_labels=3",
                    f"model.label_names={NAMES}", f"train.teacher={model}", f"run.storage_path={tmp_path}"])


def test_evaluate_writes_a_per_label_report(trained, data):
    *_, model = trained
    metrics = evaluate.main(["--checkpoint", str(model.parent.parent), "--data", str(data), "--attribution-samples", "4",
                             "--ig-steps", "2", "--wandb", "offline"])
    out = model.parent / "eval_test"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["micro_f1"] == metrics["micro_f1"] >= 0.9 and saved["count"] == 96
    assert [saved["per_class"][n]["threshold"] for n in NAMES] == Predictor.load(model).thresholds.tolist()
    table = pd.read_parquet(out / "predictions.parquet")
    truth = [[n for n in s.split(", ") if n in NAMES] for s in table["label"]]
    assert truth == decided(table["text"].tolist())  # the label cells list each text's labels
    assert np.mean(table["label"] == table["predicted"]) == pytest.approx(saved["accuracy"])  # subset accuracy
    html = (out / "report.html").read_text()
    for key in ("accuracy", "micro_f1", "hamming_loss", "f1"):
        assert f'id="m-{key}">{saved[key]:.4f}<' in html
    for name in ("confusion_matrix", "per_label", "reliability", "training_curves"):
        assert Image.open(out / f"{name}.png").info["Title"] == TITLES[name]
    [run_file] = (out / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    _, summary = logged_keys(run_file)
    assert {"micro_f1", "hamming_loss", "f1_acting"} <= summary
    with pytest.raises(ConfigError, match="a multi-label model has one sigmoid per label"):
        evaluate.main(["--checkpoint", str(model), "--data", str(data), "--calibrate", "--overwrite"])


def test_batch_prediction_writes_each_texts_labels(trained, tmp_path):
    *_, model = trained
    source = synthetic(30, 3).drop(columns="label")
    source.to_csv(tmp_path / "texts.csv", index=False)
    batch_predict.main(["--checkpoint", str(model), "--input", str(tmp_path / "texts.csv"), "--output", str(tmp_path / "out.csv")])
    out = pd.read_csv(tmp_path / "out.csv")
    assert [json.loads(cell) for cell in out["predicted_labels"]] == Predictor.load(model).predict(source["text"].tolist())
    logits = out[[f"logit_{n}" for n in NAMES]].to_numpy()
    assert np.allclose(out[[f"prob_{n}" for n in NAMES]].to_numpy(), sigmoid(logits), atol=1e-6)


def test_the_onnx_export_is_verified_on_label_decisions(trained, data):
    *_, model = trained
    record = export.main(["--checkpoint", str(model), "--data", str(data), "--check-reviews", "60"])
    check = record["exports"]["onnx"]["check"]
    assert check["max_probability_diff_vs_torch"] <= 1e-4 and check["accuracy"] >= 0.95  # 1 - Hamming loss
    texts = synthetic(20, 4)["text"].tolist()
    onnx, torch = Predictor.load(model, backend="onnx"), Predictor.load(model)
    assert np.allclose(onnx.predict(texts, return_proba=True), torch.predict(texts, return_proba=True), atol=1e-4)
    assert onnx.predict(texts) == torch.predict(texts)


def test_serving_answers_labels_and_teis_sigmoid_scores(trained, monkeypatch):
    *_, model = trained
    monkeypatch.delenv("SENTIMENT_API_KEY", raising=False)
    texts = ["story twist story twist on a long night", "a film with friends",
             "performance cast soundtrack score performance cast soundtrack score"]
    expected = Predictor.load(model).predict_details(texts)
    url = start_serve({"checkpoint": str(model), "num_cpus": 1, "max_replicas": 1})
    try:
        v1 = requests.post(f"{url}/v1/predict", json={"texts": texts}, timeout=60).json()["predictions"]
        tei = requests.post(f"{url}/predict", json={"inputs": texts}, timeout=60).json()
        info = requests.get(f"{url}/v1/model", timeout=60).json()
        body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]}
        v2 = {o["name"]: o for o in requests.post(f"{url}/v2/models/sentiment/infer", json=body, timeout=60).json()["outputs"]}
        v2_outputs = [o["name"] for o in requests.get(f"{url}/v2/models/sentiment", timeout=60).json()["outputs"]]
    finally:
        stop_serve()
    assert [p["labels"] for p in v1] == [e.labels for e in expected] == [["plot"], [], ["acting", "music"]]
    for got, want in zip(v1, expected):  # the deployment serves the ONNX export (auto): within its verified 1e-4
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-4)
    for rows, want in zip(tei, expected):  # TEI's default for a multi-label model: the sigmoids, best first
        assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)[::-1]
        assert {r["label"]: r["score"] for r in rows} == pytest.approx(want.probabilities, abs=1e-4)
    assert info["config"]["problem_type"] == "multi_label" and len(info["config"]["thresholds"]) == 3
    # KServe / Triton v2: the sigmoids, and each label's decision as a BOOL tensor
    assert v2_outputs == ["label", "probabilities", "decisions"] and v2["decisions"]["shape"] == [3, 3]
    decisions = np.asarray(v2["decisions"]["data"]).reshape(3, 3)
    assert [[n for n, on in zip(NAMES, row) if on] for row in decisions] == [e.labels for e in expected]
    assert np.allclose(np.asarray(v2["probabilities"]["data"]).reshape(3, 3),
                       [[e.probabilities[n] for n in NAMES] for e in expected], atol=1e-4)
