"""A sweep whose driver is killed (SIGKILL) part way resumes with --resume and does not redo
finished trials; a trial that raises is recorded as errored while the others finish; on tied
epochs, best.json names the checkpoint Ray kept."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray

from ray_jobs.local_ray import init_ray
from sentiment.predict import Predictor
from tests.support import sweep_config
from tune.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tiny_model_dir, small_imdb, tmp_path):
    storage = tmp_path / "sweeps"
    overrides = [
        "sweep.scheduler=fifo", "sweep.max_concurrent_trials=1",
        # 4096 makes no full step of 96 reviews: that trial raises and must be recorded as errored.
        "sweep.space={train.batch_size: {type: grid, values: [16, 4096]}}",
        # lr 1e-12 leaves the weights as they were: both epochs of the finished trial score the same.
        # Ray keeps one checkpoint and, on a tie, the later; best.json must name that one.
        "train.lr=1e-12", "run.metric=val_accuracy", "run.mode=max", "run.checkpoints_to_keep=1",
    ]
    cfg = sweep_config(tiny_model_dir, small_imdb, storage, "resumable", *overrides)
    child = subprocess.Popen(
        [sys.executable, "-m", "tune.sweep", *_cli_overrides(cfg)], cwd=ROOT,
        stdout=open(tmp_path / "first.log", "w"), stderr=subprocess.STDOUT,
    )
    finished = _wait_for_first_finished_trial(storage / "resumable", child, timeout_s=300)
    ray_processes = psutil.Process(child.pid).children(recursive=True)  # the Ray it started in-process
    # Ray's core (GCS, raylet, workers) shares the driver's fate; its dashboard and runtime-env
    # agents outlive it (seen with Ray 2.60) and are stopped here so that one Ray runs below.
    agents = [p for p in ray_processes if p.name() in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")]
    child.send_signal(signal.SIGKILL)  # no chance to save anything: Tune's last saved state must do
    child.wait(timeout=60)
    _, alive = psutil.wait_procs([p for p in ray_processes if p not in agents], timeout=60)
    assert not alive, alive
    for proc in agents:
        proc.kill()
    psutil.wait_procs(agents, timeout=30)
    before = {p: p.stat().st_mtime for p in finished}

    init_ray(num_cpus=2)  # only now: two Rays on one machine confuse Train's placement-group cleaner
    try:
        best = sweep(cfg, resume=True)
    finally:
        ray.shutdown()
    table = pd.read_csv(storage / "resumable" / "results.csv")
    assert len(table) == 2 and sorted(table["train.batch_size"]) == [16, 4096]
    assert table.set_index("train.batch_size")["status"].to_dict() == {16: "ok", 4096: "errored"}
    assert {p: p.stat().st_mtime for p in finished} == before  # finished trials were not rerun
    assert {p.parent.name.rsplit("-", 1)[-1] for p in finished} <= set(table["trial_id"])
    _assert_best_names_the_kept_checkpoint_of_a_tie(best, storage)


def _assert_best_names_the_kept_checkpoint_of_a_tie(best: dict, storage: Path) -> None:
    run = Path(best["checkpoint"]).parent
    history = json.loads((run / "epoch_002" / "train_state.json").read_text())["history"]
    assert history[0]["val_accuracy"] == history[1]["val_accuracy"]  # a tie
    assert best["epoch"] == 2 and Path(best["checkpoint"]).name == "epoch_002"
    assert not (run / "epoch_001").exists()  # Ray's retention removed the earlier epoch
    assert Predictor.load("best", storage_path=str(storage)).path == str(run / "epoch_002" / "model")


def _cli_overrides(cfg) -> list[str]:
    """The config as dotted overrides for the CLI (every key, so the child sweeps the same)."""
    flat = []
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in values.items():
            flat.append(f"{section}.{key}={json.dumps(value)}")
    return flat


def _wait_for_first_finished_trial(sweep_dir: Path, child: subprocess.Popen, timeout_s: float) -> list[Path]:
    """A finished trial's result.json, once Tune's experiment state records a trial as finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = list(sweep_dir.glob("resumable-*/result.json"))
        states = [p.read_text() for p in sweep_dir.glob("experiment_state-*.json")]
        if done and any("TERMINATED" in s for s in states):
            return done
        assert child.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")
