"""The LR range test as a real Ray Train + DeepSpeed run on a tiny model, and its CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_jobs.lr_find import find_lr
from sentiment.config import load_config
from sentiment.lr_range import LrRange, centered_average, suggest
from tests.wandb_log import records

ROOT = Path(__file__).resolve().parents[2]


def test_min_at_or_above_max_is_one_error_line_before_anything_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ray_jobs.lr_find", "--min-lr", "1e-3", "--max-lr", "1e-5", f"run.storage_path={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --min-lr 0.001 must be below --max-lr 1e-05"]
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def overrides(tiny_model_dir, small_imdb):
    """The range tests' shared setup: the tiny BERT on 256 reviews, 2 workers."""
    return [
        f"model.name_or_path={tiny_model_dir}", f"data.path={small_imdb}", "data.max_seq_length=64",
        "data.max_train_samples=256", "train.batch_size=8", "train.log_every_steps=10", "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
    ]


@pytest.fixture(scope="module")
def found(local_ray, overrides, tmp_path_factory):
    storage = tmp_path_factory.mktemp("lr-find")
    cfg = load_config(None, [*overrides, "tracking.mode=offline", f"run.storage_path={storage}"])
    # 1e-5 barely moves a tiny BERT; Adam steps of 100-1000 wreck it: the loss must diverge before
    # the last step, on synthetic and on real reviews (10 was not enough on real ones)
    return storage, find_lr(cfg, LrRange(min_lr=1e-5, max_lr=1e3, steps=60), "lrf")


@pytest.mark.ray
def test_the_loss_diverges_and_the_test_stops_there(found):
    storage, result = found
    curve = pd.read_csv(storage / "lrf" / "lr_find" / "lr_find.csv")
    assert result["stopped_because"] == "the smoothed loss diverged" and result["steps_run"] == len(curve) < 60
    assert np.allclose(np.diff(np.log10(curve["lr"])), 8 / 59)  # exponential: 8 decades over 60 steps
    assert curve["smoothed_loss"].iloc[-1] > 4 * curve["smoothed_loss"].min()


@pytest.mark.ray
def test_the_suggestion_follows_the_rule_on_the_saved_curve(found):
    """Where a tiny random BERT's loss falls depends on the data (synthetic or real reviews); the
    rule itself is tested on known curves in tests/sentiment/test_lr_range.py."""
    storage, result = found
    curve = pd.read_csv(storage / "lrf" / "lr_find" / "lr_find.csv")
    saved = json.loads((storage / "lrf" / "lr_find" / "lr_find.json").read_text())
    assert saved["suggested_lr"] == result["suggested_lr"] and saved["rule"].startswith("steepest descent")
    assert saved["suggested_lr"] == suggest(list(curve["lr"]), list(curve["loss"])).lr
    averaged = centered_average(list(curve["loss"]))
    assert 1e-5 <= saved["suggested_lr"] <= saved["min_loss_lr"] == curve.loc[averaged.argmin(), "lr"]
    assert (storage / "lrf" / "lr_find" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.ray
def test_the_curve_and_the_plot_go_to_wandb(found):
    storage, result = found
    (run_file,) = (storage / "lrf").glob("wandb/**/offline-run-*/run-*.wandb")
    keys = set()
    for rec in records(run_file):
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
    assert {"lr_find/lr", "lr_find/loss", "lr_find/smoothed_loss"} <= keys
    assert "lr_find/plot/_type" in keys  # an image: W&B nests its fields under the key


@pytest.mark.ray
def test_with_a_teacher_it_measures_the_distillation_loss_the_config_trains_with(found, overrides, smoke_run):
    """Same model, data, seed and first rate as ``found``: only the loss differs. With
    ``distill_alpha=1`` the labels drop out and the loss is T^2 KL(teacher || student)."""
    from ray_jobs.launcher import prepare_data

    storage, _ = found
    cfg = load_config(None, [*overrides, f"run.storage_path={storage}", f"train.teacher={smoke_run[1]['run_dir']}",
                             "train.distill_alpha=1", "tracking.mode=disabled"])
    data = {"train": prepare_data(cfg)["train"]}
    assert data["train"].teacher_logits is not None
    find_lr(cfg, LrRange(min_lr=1e-5, max_lr=1e-4, steps=10), "lrf-distil", data)
    distilled = pd.read_csv(storage / "lrf-distil" / "lr_find" / "lr_find.csv")
    cross_entropy = pd.read_csv(storage / "lrf" / "lr_find" / "lr_find.csv")
    assert len(distilled) == 10 and distilled["lr"].iloc[0] == pytest.approx(cross_entropy["lr"].iloc[0])
    assert abs(distilled["loss"].iloc[0] - cross_entropy["loss"].iloc[0]) > 1e-3
