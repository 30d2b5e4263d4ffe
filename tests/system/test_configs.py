"""Every training config in configs/ runs, shrunk to the tiny model as torchtune tests its recipes.

Each keeps its shape (sequence length, on a tiny BERT that takes 512 positions; truncation, padding
multiple, ZeRO stage, workers, schedule, precision where this CPU runs it, long-review scoring,
what it freezes, what it distils from or pretrains on) while the model, the data, the sizes and the
device shrink: a GPU-only config runs on CPU. The others run where a test needs their kind of run: ``configs/bert-base.yaml`` in
tests/ray_jobs/test_train.py (layer-wise decay), ``configs/minilm-distill-full.yaml`` there too (distillation,
twice: only its loss weight changed), ``configs/itpt-minilm.yaml`` in tests/ray_jobs/test_pretrain.py,
``configs/smoke.yaml`` in tests/system/test_hosts.py and tests/system/test_job_submit.py, and
``configs/serve.yaml``'s application is the one tests/serve/test_app.py deploys.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ray_jobs import pretrain
from ray_jobs.launcher import launch, prepare_data
from tests.support import kept_shape, shrink
from tune.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ["minilm-full", "quickstart", "imdb-full-cpu"]
PRETRAINING = ["minilm-itpt-full"]
pytestmark = pytest.mark.ray


@pytest.mark.parametrize("name", TRAINING)
def test_each_training_config_trains_and_tests_shrunk(name, local_ray, tiny_long_model_dir, small_imdb, tmp_path):
    cfg, raw = shrink(name, tiny_long_model_dir, small_imdb, tmp_path)
    summary = launch(cfg, prepare_data(cfg))
    assert summary["test_metrics"]["test_count"] == 16
    saved = kept_shape(Path(summary["best_checkpoint"]) / "model", raw)
    assert saved["train"]["teacher"] is None


@pytest.mark.parametrize("name", PRETRAINING)
def test_each_pretraining_config_pretrains_shrunk(name, local_ray, tiny_long_model_dir, small_imdb, tmp_path):
    cfg, raw = shrink(name, tiny_long_model_dir, small_imdb, tmp_path)
    summary = pretrain.launch(cfg)
    assert len(summary["history"]) == 1 and summary["best_val_loss"] > 0
    assert (Path(summary["model"]) / "model.safetensors").is_file()
    kept_shape(Path(summary["model"]), raw)


def test_the_sweep_config_sweeps_its_own_space_shrunk(local_ray, tiny_long_model_dir, small_imdb, tmp_path):
    cfg, raw = shrink("sweep", tiny_long_model_dir, small_imdb, tmp_path, "sweep.num_samples=1")
    best = sweep(cfg)
    table = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(table) == 1 and set(raw["sweep"]["space"]) <= set(table.columns)
    assert cfg.sweep.search == raw["sweep"]["search"] and cfg.sweep.scheduler == raw["sweep"]["scheduler"]
    assert Path(best["checkpoint"]).is_dir()
