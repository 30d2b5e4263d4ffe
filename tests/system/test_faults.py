"""Training survives a killed worker; checkpoints never look complete when their write was cut;
resuming never unpickles code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray
import torch

from ray_jobs.launcher import launch, prepare_data
from sentiment.layout import CheckpointError, resolve
from tests.support import kill_a_worker_in_epoch_2, smoke_config, worker_pids

ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 300 reviews, micro-batch 2 on 2 workers: 75 steps per epoch, long enough to land a
# kill inside epoch 2.
FAULT_RUN = ("data.max_train_samples=300", "train.epochs=3", "train.batch_size=2", "train.log_every_steps=25", "run.max_failures=1")


def _state(run_dir: str | Path, epoch: int) -> dict:
    return json.loads((Path(run_dir) / f"epoch_{epoch:03d}" / "train_state.json").read_text())


def _rank_0_pid(pids: list[int]) -> int:
    """The worker that holds the W&B run (its wandb-core is a child): the hardest one to lose."""
    (pid,) = [p for p in pids if any(c.name() == "wandb-core" for c in psutil.Process(p).children())]
    return pid


@pytest.fixture(scope="module")
def uninterrupted(local_ray, tiny_model_dir, small_imdb, tmp_path_factory):
    cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path_factory.mktemp("runs"), "uninterrupted", *FAULT_RUN)
    data = prepare_data(cfg)
    return launch(cfg, ray.put(data)), data


@pytest.mark.ray
@pytest.mark.slow  # CI runs the stronger form: a whole host lost mid-epoch 2, on S3 (tests/system/test_hosts.py)
def test_worker_killed_in_epoch_2_restarts_from_epoch_1_and_matches_an_uninterrupted_run(
    uninterrupted, tiny_model_dir, small_imdb, tmp_path
):
    reference, data = uninterrupted
    cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path, "killed", *FAULT_RUN)
    run_dir = tmp_path / "killed"
    killer, seen = kill_a_worker_in_epoch_2(run_dir, _rank_0_pid)
    summary = launch(cfg, ray.put(data))
    killer.join(timeout=10)
    assert seen.get("pid"), seen
    assert "epoch_002" not in seen["epochs_done_at_kill"]  # the kill landed inside epoch 2
    assert seen["pid"] not in worker_pids()

    got, want = _state(run_dir, 3), _state(reference["run_dir"], 3)
    assert got["starts"] == 2 and want["starts"] == 1  # restarted once, from the epoch-1 checkpoint
    assert len(list(run_dir.glob("wandb/wandb/offline-run-*"))) == 2  # W&B recorded both starts
    assert got["global_step"] == want["global_step"] == 3 * 75
    for g, w in zip(got["history"], want["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "step"):
            assert g[key] == pytest.approx(w[key], abs=1e-4), (g["epoch"], key)
    assert summary["test_metrics"]["test_loss"] == pytest.approx(reference["test_metrics"]["test_loss"], abs=1e-4)


class _RunsCode:
    """A pickle that, when unpickled without weights_only, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.ray
def test_resume_never_unpickles_code_from_a_tampered_optimizer_shard(local_ray, smoke_run, tiny_model_dir, small_imdb, tmp_path):
    _, reference = smoke_run  # a 2-worker ZeRO-2 run: its last checkpoint has each rank's optimizer shard
    tampered = tmp_path / "epoch_002"
    shutil.copytree(reference["last_checkpoint"], tampered)
    marker = tmp_path / "code-ran"
    shard = tampered / "deepspeed" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _RunsCode(marker)}, shard)  # a real torch file, with a payload
    cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path, "tampered", "tracking.mode=disabled",
                       f"run.resume_from={tampered}")
    with pytest.raises(Exception, match="Weights only load failed"):
        launch(cfg, prepare_data(cfg))
    assert not marker.exists()


SLOW_WRITE = """
import sys, time
from pathlib import Path
from sentiment.model_folder import save_model_dir
from sentiment.config import load_config

class SlowModel:
    def save_pretrained(self, folder, safe_serialization):
        Path(folder, "config.json").write_text("{}")
        with open(Path(folder, "model.safetensors"), "wb") as f:
            f.write(b"partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

class Tok:
    def save_pretrained(self, folder):
        pass

save_model_dir(SlowModel(), Tok(), load_config(None, []), {}, sys.argv[1])
"""


def test_a_checkpoint_write_killed_midway_leaves_nothing_that_looks_complete(tmp_path):
    dest = tmp_path / "run" / "epoch_001" / "model"
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(dest)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert not dest.exists()  # only a .tmp- sibling, which no loader looks at
    assert [p.name.startswith(".tmp-model-") for p in dest.parent.iterdir()] == [True]
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(dest)
    with pytest.raises(CheckpointError, match="not a complete model checkpoint"):
        resolve(dest.parent)  # the epoch folder has no model/ folder


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB tmpfs (one checkpoint of the tiny model, 2 ZeRO-2 ranks, is about 16 MiB): room for
    epoch 1, not epoch 2."""
    mount = tmp_path / "storage"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.ray
def test_a_full_storage_stops_the_run_in_one_line_and_a_rerun_with_space_resumes(local_ray, tiny_model_dir, small_imdb, small_tmpfs):
    from ray_jobs.train import storage_full_line
    from sentiment.predict import Predictor

    cfg = smoke_config(tiny_model_dir, small_imdb, small_tmpfs, "full", "tracking.mode=disabled", "run.max_failures=1")
    data = ray.put(prepare_data(cfg))
    run_dir = small_tmpfs / "full"
    with pytest.raises(ray.train.TrainingFailedError) as failed:
        launch(cfg, data)
    line = storage_full_line(failed.value)
    assert line is not None and "\n" not in line, failed.value
    assert line.startswith(f"storage full: {small_tmpfs} has ") and "the epoch 2 checkpoint" in line and "MiB free" in line
    needed = float(line.split(" needs ")[1].split(" MiB")[0])
    assert 12 < needed < 24  # the checkpoint's real size, not a guess
    # nothing of epoch 2 was written; epoch 1 is complete and loads
    assert not (run_dir / "epoch_002").exists()
    weights = (run_dir / "epoch_001" / "model" / "model.safetensors").read_bytes()
    assert Predictor.load(run_dir / "epoch_001").predict(["fine"]) in (["negative"], ["positive"])
    assert _state(run_dir, 1)["starts"] == 1
    # room again: the same run resumes from epoch 1 and finishes
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    summary = launch(cfg, data)
    final = _state(run_dir, 2)
    assert final["starts"] == 2 and final["epoch"] == 2 and summary["test_metrics"]["test_count"] == 64
    assert final["history"][0] == _state(run_dir, 1)["history"][0]
    assert (run_dir / "epoch_001" / "model" / "model.safetensors").read_bytes() == weights
