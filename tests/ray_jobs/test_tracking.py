"""ray_jobs.tracking: one meaning of the W&B modes for training, evaluation and serving lineage."""

from __future__ import annotations

import time

from ray_jobs.tracking import record_served_model, resolve_mode, run_id, start_tracking
from sentiment.config import load_config
from sentiment.layout import resolve
from tests.support import make_checkpoint
from tests.wandb_log import records


def test_auto_is_online_with_a_key_and_offline_without(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    assert resolve_mode("auto") == "offline" and resolve_mode("disabled") == "disabled"


def test_run_ids_are_stable_and_safe():
    assert run_id("sweep-1/trial:a b") == "sweep-1-trial-a-b" and len(run_id("x" * 100)) == 64


def test_disabled_tracking_is_a_no_op(tmp_path):
    tracker = start_tracking(load_config(None, ["tracking.mode=disabled"]), "r", str(tmp_path))
    tracker.log({"a": 1})
    tracker.finish()
    assert not tracker.enabled and list(tmp_path.iterdir()) == []


def test_deploying_records_the_served_model_by_its_sha256(tiny_model_dir, tmp_path, monkeypatch):
    model = resolve(make_checkpoint(tiny_model_dir, tmp_path / "model"))
    record_served_model(model, "offline", "bert-imdb", str(tmp_path))
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # wandb-core may still be appending to the offline file when finish() returns (seen once in a
    # fresh-clone CI run): read it until the artifact record is there, bounded.
    deadline = time.monotonic() + 20
    while not (logged := [r.artifact for r in records(run_file) if r.WhichOneof("record_type") == "artifact"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    config = [r.run.config for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    assert len(logged) == 1 and logged[0].type == "model" and logged[0].name == f"served-model-{model.sha256[:12]}"
    assert "production" in logged[0].aliases and any(model.sha256 in str(c) for c in config)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    record_served_model(model, "disabled", "bert-imdb", str(tmp_path))
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1
    record_served_model(model, "auto", "bert-imdb", str(tmp_path))  # auto without a key: offline, as training
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 2
