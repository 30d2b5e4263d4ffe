"""Secrets in the environment (W&B key, Serve API key) never reach what training and evaluation
write: checkpoints, saved configs, result files, reports, W&B files or Ray's session logs."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import ray

from ray_jobs import evaluate
from ray_jobs.launcher import launch, prepare_data
from tests.support import smoke_config

pytestmark = pytest.mark.ray
WANDB_KEY = "wandb-" + secrets.token_hex(20)
API_KEY = "api-" + secrets.token_hex(16)


def _all_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_secrets_never_reach_run_files_reports_wandb_or_ray_logs(monkeypatch, tiny_model_dir, small_imdb, tmp_path):
    # set before Ray starts: its processes (and so the workers) inherit them, as on a real node
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("SENTIMENT_API_KEY", API_KEY)
    from ray_jobs.local_ray import init_ray

    init_ray(num_cpus=2)
    try:
        cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path / "runs", "secret-run", "train.epochs=1",
                           "tracking.mode=offline")  # a key in the env must not switch a test to online
        summary = launch(cfg, prepare_data(cfg))
        metrics = evaluate.main(["--checkpoint", summary["run_dir"], "--data", str(small_imdb),
                                 "--attribution-samples", "4", "--ig-steps", "2", "--wandb", "offline"])
        assert metrics["count"] == 64  # the report was written (its W&B files are searched below)
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        written = _all_bytes(tmp_path / "runs") + _all_bytes(logs)
    finally:
        ray.shutdown()
    assert b"secret-run" in written and b"val_accuracy" in written  # the grep reads the right files
    assert list((tmp_path / "runs").rglob("*.wandb")) and list((tmp_path / "runs").rglob("model.safetensors"))
    for secret in (WANDB_KEY, API_KEY):
        assert secret.encode() not in written
        assert secret[-16:].encode() not in written  # not even a tail of it
