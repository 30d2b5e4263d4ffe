"""Within-task masked-LM pretraining on a real local Ray (2 workers, DeepSpeed ZeRO-2, tiny BERT):
per-epoch checkpoints, resume after a killed worker, and an output
folder that fine-tuning takes as ``model.name_or_path``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
from transformers import AutoModelForMaskedLM

from ray_jobs.pretrain import launch, prepare_windows
from tests.support import kill_a_worker_in_epoch_2, pretrain_config, smoke_config


@pytest.fixture(scope="module")
def uninterrupted(local_ray, unlabelled, tiny_model_dir, tmp_path_factory):
    cfg = pretrain_config(tiny_model_dir, unlabelled, tmp_path_factory.mktemp("pretrain"), "itpt")
    windows = prepare_windows(cfg)
    return launch(cfg, windows), windows


@pytest.mark.ray
def test_pretraining_checkpoints_every_epoch_and_its_model_is_fine_tuned_from(uninterrupted, small_imdb, tmp_path):
    from ray_jobs.launcher import launch as train
    from ray_jobs.launcher import prepare_data

    summary, _ = uninterrupted
    run = Path(summary["run_dir"])
    history = json.loads((run / "epoch_003" / "train_state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["val_loss"] < history[0]["val_loss"]
    assert json.loads((run / "pretrain.json").read_text())["model"] == summary["model"]
    kept = sorted(run.glob("epoch_*"))  # run.checkpoints_to_keep=2: the best (lowest val_loss) two
    assert len(kept) == 2 and Path(summary["best_checkpoint"]) in kept
    for epoch in kept:
        assert len(list((epoch / "deepspeed" / "state").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert len(list(run.glob("wandb/wandb/offline-run-*"))) == 1
    model = Path(summary["model"])
    AutoModelForMaskedLM.from_pretrained(model)  # a plain HF masked-LM folder

    cfg = smoke_config(model, small_imdb, tmp_path, "from-itpt", "train.epochs=1", "deepspeed.zero_stage=0")
    tuned = train(cfg, prepare_data(cfg))
    from safetensors.torch import load_file

    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(Path(tuned["best_checkpoint"]) / "model" / "model.safetensors"))
    name = "bert.embeddings.word_embeddings.weight"
    assert name in before and np.allclose(before[name].numpy(), after[name].numpy(), atol=0.1)  # started from it


@pytest.mark.ray
@pytest.mark.slow  # the resume is ray_jobs.worker's, which CI checks on fine-tuning (test_train, test_hosts)
def test_a_worker_killed_mid_run_resumes_from_its_last_checkpoint_and_matches(uninterrupted, unlabelled, tiny_model_dir, tmp_path):
    """The kill comes once epoch 1's checkpoint is registered, in epoch 2 or (registration trails the
    report by up to 2 s, and an epoch here takes about 2 s) in epoch 3: either way before the end."""
    reference, windows = uninterrupted
    run_dir = tmp_path / "killed"
    killer, seen = kill_a_worker_in_epoch_2(run_dir, lambda pids: pids[0])
    launch(pretrain_config(tiny_model_dir, unlabelled, tmp_path, "killed"), windows)
    killer.join(timeout=10)
    assert seen.get("pid") and "epoch_003" not in seen["epochs_done_at_kill"], seen
    got = json.loads((run_dir / "epoch_003" / "train_state.json").read_text())
    want = json.loads((Path(reference["run_dir"]) / "epoch_003" / "train_state.json").read_text())
    assert got["starts"] == 2 and want["starts"] == 1 and got["global_step"] == want["global_step"]
    for g, w in zip(got["history"], want["history"], strict=True):
        for key in ("train_loss", "val_loss", "step"):
            assert g[key] == pytest.approx(w[key], abs=1e-4), (g["epoch"], key)
    assert ray.is_initialized()
