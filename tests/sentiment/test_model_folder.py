"""sentiment.model_folder: a model folder is a plain Hugging Face folder with its config, metrics and test
metrics (the fixture model_dir writes one)."""

from __future__ import annotations

import json

from sentiment import model_folder, storage
from sentiment.layout import resolve


def test_model_folder_is_plain_hf_with_config_and_metrics(model_dir):
    folder = model_dir / "epoch_001" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_config.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin"))  # safetensors only
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    model = resolve(folder)
    assert model.config.model.label_names == ["neg", "pos"] and model.metrics == {"val_accuracy": 0.5}
    import hashlib

    weights = (folder / "model.safetensors").read_bytes()
    assert model.sha256 == hashlib.sha256(weights).hexdigest() and model.size == len(weights)


def test_test_metrics_go_to_the_run_and_the_tested_folder_whose_card_gets_its_model_index(model_dir, small_imdb):
    import pandas as pd
    from huggingface_hub import ModelCard

    from sentiment.metrics import compute_metrics
    from sentiment.predict import Predictor

    folder = model_dir / "epoch_001" / "model"
    reviews = pd.read_parquet(small_imdb / "test.parquet").head(64)
    predictor = Predictor.load(folder)
    logits = predictor.logits(predictor.encode(list(reviews["text"])))
    metrics = compute_metrics(logits, reviews["label"].to_numpy(), ["neg", "pos"], prefix="test_")
    metrics |= {"test_epoch": 1, "test_checkpoint": str(model_dir / "epoch_001")}  # as the training run records them
    fs, run_dir = storage.filesystem(model_dir)
    model_folder.write_test_metrics(fs, run_dir, metrics)
    recorded = json.loads((model_dir / "test_metrics.json").read_text())
    assert json.loads((folder / "test_metrics.json").read_text()) == recorded == json.loads(json.dumps(metrics))
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "f1", "precision", "recall"}
    assert results["accuracy"].metric_value == recorded["test_accuracy"] and results["f1"].metric_value == recorded["test_f1"]
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results.values()} == \
        {("text-classification", "stanfordnlp/imdb", "imdb", "test")}
    assert card.data.model_name and card.data.datasets == ["stanfordnlp/imdb"]
    assert f"| test_accuracy | {recorded['test_accuracy']:.4f} |" in card.text and "Test: 64 reviews" in card.text
    assert resolve(model_dir / "epoch_001").location == str(folder)  # the epoch checkpoint still resolves
