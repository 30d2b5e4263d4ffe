"""k-fold cross-validation: the folds (pure), bad fold counts, and the K trials on a real local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentiment.config import ConfigError, load_config
from sentiment.data import EncodedSplit, check_folds, cross_validation_fold, load_splits
from tests.wandb_log import run_groups
from tune.cv import cross_validate, cut_folds, main

ROOT = Path(__file__).resolve().parents[2]


def pool(n: int = 60, positives: int = 20) -> EncodedSplit:
    labels = np.array([1] * positives + [0] * (n - positives))
    return EncodedSplit([np.array([i]) for i in range(n)], labels)


def fold_rows(split: EncodedSplit) -> set[int]:
    return {int(ids[0]) for ids in split.ids}


def test_folds_partition_the_pool_stratified_and_seeded():
    data, k = pool(), 4
    cfg = load_config(None, [f"data.cv_folds={k}", "data.seed=7"]).data
    folds = [cross_validation_fold(data, cfg.model_copy(update={"cv_fold": i})) for i in range(k)]
    validated = [fold_rows(f["validation"]) for f in folds]
    assert set().union(*validated) == set(range(60)) and sum(map(len, validated)) == 60  # each row once
    for fold, val in zip(folds, validated):
        assert fold_rows(fold["train"]) == set(range(60)) - val
        assert fold["validation"].labels.sum() == 5  # 20 positives / 4 folds, in every fold
    again = cross_validation_fold(data, cfg.model_copy(update={"cv_fold": 2}))
    assert fold_rows(again["validation"]) == validated[2]
    other_seed = cross_validation_fold(data, cfg.model_copy(update={"cv_fold": 2, "seed": 8}))
    assert fold_rows(other_seed["validation"]) != validated[2]


@pytest.mark.parametrize("folds, message", [
    (1, "--folds 1: cross-validation needs at least 2 folds"),
    (21, r"--folds 21 is more than the smallest class of the training pool has reviews \('pos': 20\)"),
])
def test_fold_counts_that_cannot_work_are_refused(folds, message):
    with pytest.raises(ConfigError, match=message):
        check_folds(pool().labels, folds, ["neg", "pos"])


def test_a_fold_outside_the_folds_is_a_config_error():
    with pytest.raises(ConfigError, match="data.cv_fold=3 must be below data.cv_folds=3"):
        load_config(None, ["data.cv_folds=3", "data.cv_fold=3"])


def test_cross_validation_reads_no_test_split(small_imdb):
    cfg = load_config(None, [f"data.path={small_imdb}", "data.cv_folds=3", "data.max_train_samples=90"]).data
    splits = load_splits(cfg, ["neg", "pos"])
    assert list(splits) == ["train"] and len(splits["train"]) == 90


def cv_args(model_dir, data_dir, storage, *extra) -> list[str]:
    return [
        f"model.name_or_path={model_dir}", f"data.path={data_dir}", "data.max_seq_length=64",
        "data.max_train_samples=96", "train.epochs=1", "train.batch_size=16", "train.log_every_steps=3",
        "scaling.num_workers=1", "scaling.cpus_per_worker=0.9", "tracking.mode=offline",
        "run.max_failures=0", f"run.storage_path={storage}", *extra,
    ]


def test_too_many_folds_fail_before_ray_starts(tiny_model_dir, small_imdb, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tune.cv", "--folds", "49", *cv_args(tiny_model_dir, small_imdb, tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --folds 49 is more than the smallest class of the training pool has reviews ('negative': 48); "
        "every fold needs each class"
    )
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def validated(local_ray, tiny_model_dir, small_imdb, tmp_path_factory):
    storage = tmp_path_factory.mktemp("cv")
    cfg = load_config(None, [*cv_args(tiny_model_dir, small_imdb, storage), "data.cv_folds=2"])
    return cfg, storage, cross_validate(cfg, "cv2", cut_folds(cfg))


@pytest.mark.ray
def test_each_fold_trains_and_validates_on_its_own_part(validated):
    cfg, storage, table = validated
    saved = pd.read_csv(storage / "cv2" / "cv.csv", dtype={"fold": str})
    assert list(saved["fold"]) == ["1", "2", "mean", "std"] and list(saved["status"][:2]) == ["ok", "ok"]
    folds = saved.iloc[:2]
    assert saved.loc[2, "val_accuracy"] == pytest.approx(folds["val_accuracy"].mean())
    assert saved.loc[3, "val_accuracy"] == pytest.approx(folds["val_accuracy"].std(ddof=1))
    assert "val_accuracy" in (storage / "cv2" / "cv.md").read_text().splitlines()[-1]
    for fold in (1, 2):
        run = storage / "cv2" / f"cv2-fold{fold}"
        result = json.loads((run / "result.json").read_text())
        assert result["test_metrics"] is None and not (run / "test_metrics.json").exists()
        assert result["config"]["data"]["cv_fold"] == fold - 1
        history = json.loads((Path(result["best_checkpoint"]) / "train_state.json").read_text())["history"]
        best = history[result["best_metrics"]["epoch"] - 1]
        assert folds.loc[fold - 1, "val_accuracy"] == pytest.approx(best["val_accuracy"])
        assert best["val_count"] == 48  # half of the 96-review pool validates in each fold


@pytest.mark.ray
def test_one_wandb_run_per_fold_in_one_group(validated):
    cfg, storage, table = validated
    runs = run_groups(storage / "cv2")
    assert len(runs) == 3 and set(runs.values()) == {"cv2"}
    assert sum(run_id.endswith("summary") for run_id in runs) == 1


@pytest.mark.ray
def test_resume_keeps_finished_folds(validated, tiny_model_dir, small_imdb):
    cfg, storage, table = validated
    before = {p: p.stat().st_mtime_ns for p in (storage / "cv2").glob("cv2-fold*/epoch_*/train_state.json")}
    resumed = main(["--folds", "2", "--name", "cv2", "--resume", *cv_args(tiny_model_dir, small_imdb, storage)])
    after = {p: p.stat().st_mtime_ns for p in (storage / "cv2").glob("cv2-fold*/epoch_*/train_state.json")}
    assert before and after == before  # no fold trained again
    pd.testing.assert_frame_equal(resumed.drop(columns="wall_time_s"), table.drop(columns="wall_time_s"))


def test_resume_needs_a_name():
    with pytest.raises(ConfigError, match="--resume needs --name"):
        main(["--folds", "2", "--resume"])
