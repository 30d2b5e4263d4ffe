"""Ray Tune sweeps over real Ray Train runs: search-space checks, ASHA, results, best.json, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sentiment.config import ConfigError, load_config
from sentiment.predict import Predictor
from tests.support import sweep_config
from tests.wandb_log import run_groups
from tune.sweep import concurrency, sweep, validate_space

ROOT = Path(__file__).resolve().parents[2]


LR_GRID = "sweep.space={train.lr: {type: grid, values: [1.0e-4, 3.0e-3, 3.0e-2, 0.2]}}"


@pytest.mark.parametrize("override, message", [
    ("sweep.space={}", "sweep.space is empty"),
    ("sweep.space={train.lrr: {type: choice, values: [1]}}", "'train.lrr' is not a config key"),
    ("sweep.space={train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-5}}", "must be below high"),
    ("sweep.space={train.lr: {type: choice, values: [0.001, -1]}}", "train.lr can produce -1"),
    ("sweep.space={data.truncation: {type: choice, values: [head, middle]}}", "data.truncation can produce 'middle'"),
    ("sweep.space={train.lr: {type: choice, values: []}}", "non-empty 'values'"),
])
def test_bad_search_spaces_fail_before_any_trial(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_space(load_config(None, [override]))


def test_grid_needs_the_random_searcher():
    with pytest.raises(ConfigError, match="grid needs sweep.search=random"):
        validate_space(load_config(None, ["sweep.search=optuna", LR_GRID]))


def test_concurrency_from_the_cluster():
    cfg = load_config(None, ["scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.use_gpu=true"])
    assert concurrency(cfg, {"CPU": 16, "GPU": 8}) == 4  # 8 GPUs / 2 per trial
    with pytest.raises(ConfigError, match="max_concurrent_trials=3 needs"):
        concurrency(cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"max_concurrent_trials": 3})}),
                    {"CPU": 16, "GPU": 4})
    with pytest.raises(ConfigError, match="one trial needs"):
        concurrency(cfg, {"CPU": 16, "GPU": 1})


@pytest.fixture(scope="module")
def swept(local_ray, tiny_model_dir, small_imdb, tmp_path_factory):
    storage = tmp_path_factory.mktemp("sweeps")
    cfg = sweep_config(tiny_model_dir, small_imdb, storage, "asha", LR_GRID)
    return cfg, storage, sweep(cfg)


@pytest.mark.ray
def test_asha_stops_a_trial_and_the_table_has_every_trial(swept):
    cfg, storage, best = swept
    table = pd.read_csv(storage / "asha" / "results.csv")
    assert len(table) == 4 and set(table["train.lr"]) == {1e-4, 3e-3, 3e-2, 0.2}
    assert (table["status"] == "ok").all()
    assert table["stopped_early"].sum() >= 1 and table["epochs_run"].min() == 1
    assert (storage / "asha" / "results.md").read_text().count("\n") == 4 + 2


@pytest.mark.ray
def test_best_json_points_at_the_best_loadable_checkpoint(swept):
    cfg, storage, best = swept
    table = pd.read_csv(storage / "asha" / "results.csv")
    assert best["value"] == pytest.approx(table["val_loss"].min())
    for pointer in (storage / "asha" / "best.json", storage / "best.json"):
        assert json.loads(pointer.read_text())["checkpoint"] == best["checkpoint"]
    predictor = Predictor.load("best", storage_path=str(storage))
    assert predictor.path == str(Path(best["checkpoint"]) / "model")
    recorded = json.loads((Path(best["checkpoint"]) / "model" / "metrics.json").read_text())
    assert recorded["val_loss"] == pytest.approx(best["value"])


@pytest.mark.ray
def test_one_wandb_run_per_trial_in_one_group(swept):
    cfg, storage, best = swept
    runs = run_groups(storage / "asha")
    trial_runs = {k: v for k, v in runs.items() if not k.endswith("summary")}
    assert len(trial_runs) == 4 and set(runs.values()) == {"asha"}
    assert "asha-summary" in runs
