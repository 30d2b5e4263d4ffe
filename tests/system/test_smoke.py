"""The fast tier's end-to-end path: train for real, load the run with Predictor, serve one request;
secrets in the environment (W&B key, Serve API key) never reach what it writes.

On real IMDB reviews (``$IMDB_DATA_DIR``) it fine-tunes the packaged MiniLM, which must learn
sentiment from a few hundred reviews; on the synthetic stand-in it trains the tiny BERT, which
must learn its word cues. Either way the test accuracy has a floor that a broken pipeline (labels
shuffled, weights not saved, the wrong checkpoint loaded) falls under.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
import ray
import requests

from ray_jobs import evaluate
from ray_jobs.launcher import launch, prepare_data
from ray_jobs.local_ray import init_ray
from sentiment.config import PACKAGED_MODEL
from sentiment.data import load_splits
from sentiment.layout import resolve
from sentiment.predict import Predictor
from tests.conftest import imdb_dir
from tests.support import smoke_config, start_serve, stop_serve

pytestmark = [pytest.mark.ray, pytest.mark.smoke]

REAL = imdb_dir() is not None
# MiniLM on 360 real reviews, 2 epochs at 64 tokens (head+tail): 76% on the 200 test reviews
# (measured 2026-11-30, 2-core CPU, about 80 s; chance is 50%, one standard error 3 points).
# The tiny BERT on the synthetic cues: about 100%.
FLOOR = 0.70 if REAL else 0.90
WANDB_KEY = "wandb-" + secrets.token_hex(20)
API_KEY = "api-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def run(tiny_model_dir, small_imdb, tmp_path_factory):
    model = PACKAGED_MODEL if REAL else str(tiny_model_dir)
    extra = (["data.max_seq_length=64", "train.epochs=2", "train.lr=3e-4", "scaling.num_workers=1",
              "scaling.cpus_per_worker=2", "data.max_train_samples=null", "data.max_test_samples=null",
              "data.validation_fraction=0.1", "train.warmup_ratio=0.1", "deepspeed.zero_stage=0"]
             if REAL else ["train.epochs=3", "train.lr=2e-3", "data.max_train_samples=null", "data.max_test_samples=null"])
    cfg = smoke_config(model, small_imdb, tmp_path_factory.mktemp("runs"), "e2e", *extra)  # W&B offline
    with pytest.MonkeyPatch.context() as env:
        # set before this module's Ray starts: its processes (and so the workers) inherit them, as on
        # a real node; a key in the environment must not switch W&B from offline to online
        env.setenv("WANDB_API_KEY", WANDB_KEY)
        env.setenv("SENTIMENT_API_KEY", API_KEY)
        ray.shutdown()  # a Ray left by another module would lack them
        init_ray(num_cpus=2)
        summary = launch(cfg, prepare_data(cfg))
        yield cfg, summary
    stop_serve()


def test_training_beats_the_accuracy_floor(run):
    _, summary = run
    test = summary["test_metrics"]
    assert test["test_count"] == 200
    assert test["test_accuracy"] >= FLOOR, f"test accuracy {test['test_accuracy']:.3f} under the floor {FLOOR}"


def test_predictor_loads_the_run_and_agrees_with_training(run):
    cfg, summary = run
    predictor = Predictor.load(summary["run_dir"])
    assert predictor.resolved.epoch_dir == summary["best_checkpoint"]
    test = load_splits(cfg.data, cfg.model.label_names)["test"]
    proba = predictor.predict(list(test["text"]), return_proba=True)
    accuracy = float((proba.argmax(1) == np.asarray(test["label"])).mean())
    assert accuracy == pytest.approx(summary["test_metrics"]["test_accuracy"], abs=1 / len(test))


def _all_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_secrets_never_reach_run_files_reports_wandb_or_ray_logs(run, small_imdb):
    _, summary = run
    metrics = evaluate.main(["--checkpoint", summary["run_dir"], "--data", str(small_imdb),
                             "--attribution-samples", "4", "--ig-steps", "2", "--wandb", "offline"])
    assert metrics["count"] == 200  # the report was written (its W&B files are searched below)
    runs = Path(summary["run_dir"]).parent
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    written = _all_bytes(runs) + _all_bytes(logs)
    assert b"e2e" in written and b"val_accuracy" in written  # the grep reads the right files
    assert list(runs.rglob("*.wandb")) and list(runs.rglob("model.safetensors"))
    for secret in (WANDB_KEY, API_KEY):
        assert secret.encode() not in written
        assert secret[-16:].encode() not in written  # not even a tail of it


def test_one_served_request_matches_the_predictor(run):
    _, summary = run
    url = start_serve({"checkpoint": summary["run_dir"], "num_cpus": 1, "max_replicas": 1})
    text = "A fun brain candy movie... good dialog, and a cast that clearly enjoyed it."
    assert requests.post(f"{url}/v1/predict", json={"text": text}, timeout=60).status_code == 401  # the node's key
    key = {"Authorization": f"Bearer {API_KEY}"}
    reply = requests.post(f"{url}/v1/predict", json={"text": text}, headers=key, timeout=60)
    assert reply.status_code == 200, reply.text
    [served] = reply.json()["predictions"]
    predictor = Predictor.load(summary["run_dir"])
    [local] = predictor.predict_details([text])
    assert served["label"] == local.label and served["probabilities"] == pytest.approx(local.probabilities, abs=1e-5)
    info = requests.get(f"{url}/v1/model", headers=key, timeout=30).json()
    assert info["sha256"] == resolve(summary["run_dir"]).sha256 and info["path"] == predictor.path
