"""Within-task masked-LM pretraining on a real local Ray (2 workers, DeepSpeed ZeRO-2, tiny BERT):
texts and whole-word masks, per-epoch checkpoints, resume after a killed worker, and an output
folder that fine-tuning takes as ``model.name_or_path``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from transformers import AutoModelForMaskedLM

from ray_jobs.pretrain import launch, prepare_windows
from sentiment.config import load_config
from sentiment.data import DataError, clean_text
from sentiment.model import load_tokenizer
from sentiment.pretraining import MaskedPositionsMLM, MaskingCollator, pretraining_texts, to_windows
from tests.conftest import imdb_dir
from tests.support import kill_a_worker_in_epoch_2

# 120 texts in windows of at most 64 tokens per window, micro-batch 4 on 2 workers: long enough epochs to
# land a kill inside epoch 2.
ROOT = Path(__file__).resolve().parent.parent
RUN = ("pretrain.max_texts=120", "pretrain.validation_texts=24", "data.max_seq_length=64", "train.epochs=3",
       "train.batch_size=4", "train.lr=1e-3", "train.log_every_steps=20", "deepspeed.zero_stage=2",
       "scaling.num_workers=2", "tracking.mode=offline", "run.max_failures=1")


@pytest.fixture(scope="module")
def unlabelled(small_imdb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_imdb plus an ``unsupervised`` split (real unlabelled reviews when $IMDB_DATA_DIR is set)."""
    folder = tmp_path_factory.mktemp("imdb-unlabelled")
    for split in ("train", "test"):
        shutil.copy(small_imdb / f"{split}.parquet", folder)
    real = imdb_dir()
    if real is not None:
        df = pd.read_parquet(real / "unsupervised.parquet").sample(300, random_state=0)
    else:
        df = pd.DataFrame({"text": [f"an unlabelled review number {i} about a film " * (1 + i % 9) for i in range(300)],
                           "label": -1})
    df.to_parquet(folder / "unsupervised.parquet", index=False)
    return folder


def _config(model: Path, data: Path, storage: Path, name: str, *extra: str):
    return load_config(ROOT / "configs" / "itpt-minilm.yaml", [  # the in-domain pretraining config, shrunk
        f"model.name_or_path={model}", f"data.path={data}", f"run.storage_path={storage}", f"run.name={name}", *RUN, *extra])


def test_texts_come_from_the_chosen_splits_never_the_test_split(unlabelled, tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, unlabelled, tmp_path, "texts", "pretrain.max_texts=null")
    train, held = pretraining_texts(cfg)
    test = set(map(clean_text, pd.read_parquet(unlabelled / "test.parquet")["text"]))
    unsup = set(map(clean_text, pd.read_parquet(unlabelled / "unsupervised.parquet")["text"]))
    train_split = set(map(clean_text, pd.read_parquet(unlabelled / "train.parquet")["text"]))
    assert len(held) == 24 and not (set(train) | set(held)) & (test - train_split)
    assert (set(train) | set(held)) & unsup and len(set(train) | set(held)) == len(train) + len(held)
    only_train, _ = pretraining_texts(_config(tiny_model_dir, unlabelled, tmp_path, "t", "pretrain.splits=[train]"))
    assert not set(only_train) & unsup
    (tmp_path / "no-unsup").mkdir()
    shutil.copy(unlabelled / "train.parquet", tmp_path / "no-unsup")
    with pytest.raises(DataError, match=r"has no unsupervised.parquet file \(pretrain.splits names it\)"):
        pretraining_texts(_config(tiny_model_dir, tmp_path / "no-unsup", tmp_path, "t"))


def test_whole_words_are_masked_together_and_the_same_seed_masks_alike(tiny_model_dir, tmp_path):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=32", "pretrain.mlm_probability=0.5"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    windows = to_windows(tokenizer, ["unbelievably overwrought melodramas " * 12, "fine"], 32)
    assert len(windows) > 2 and windows.owners[0] == 0 and windows.owners[-1] == 1 and max(windows.lengths) == 32
    rows = list(range(len(windows)))
    batch = MaskingCollator(tokenizer, cfg, seed=3)(windows, rows)
    again = MaskingCollator(tokenizer, cfg, seed=3)(windows, rows)
    assert (batch["labels"] == again["labels"]).all() and (batch["labels"] >= 0).any()
    for ids, labels in zip(windows.input_ids, batch["labels"].tolist()):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        for i, piece in enumerate(pieces):
            if piece.startswith("##") and i > 1:  # a continuation is masked exactly when the piece before it is
                assert (labels[i] >= 0) == (labels[i - 1] >= 0), (pieces, labels)


def test_the_head_at_masked_positions_only_gives_the_models_own_loss_and_gradients(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "data.max_seq_length=32"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    windows = to_windows(tokenizer, ["a slow, overwrought and strangely moving film " * 5, "fine"], 32)
    batch = MaskingCollator(tokenizer, cfg, seed=5)(windows, list(range(len(windows))))
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    wrapped = MaskedPositionsMLM(mlm)
    assert wrapped.head_name == "cls" and not any(n.startswith("head") for n, _ in wrapped.named_parameters())
    losses, grads = [], []
    for model in (mlm, wrapped):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n.removeprefix("mlm."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
    assert grads[0].keys() == grads[1].keys()
    # float32 sums in another order: over 30 random tiny models the largest difference was 4.2e-6 of
    # the largest gradient (a fixed 1e-6 failed once in CI); a wrong head differs by percents of it
    scale = max(g.abs().max().item() for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=2e-5 * scale, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(local_ray, unlabelled, tiny_model_dir, tmp_path_factory):
    cfg = _config(tiny_model_dir, unlabelled, tmp_path_factory.mktemp("pretrain"), "itpt")
    windows = prepare_windows(cfg)
    return launch(cfg, windows), windows


@pytest.mark.ray
def test_pretraining_checkpoints_every_epoch_and_its_model_is_fine_tuned_from(uninterrupted, small_imdb, tmp_path):
    from transformers import AutoModelForMaskedLM

    from ray_jobs.launcher import launch as train
    from ray_jobs.launcher import prepare_data
    from tests.support import smoke_config

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
def test_a_worker_killed_in_epoch_2_resumes_from_epoch_1_and_matches(uninterrupted, unlabelled, tiny_model_dir, tmp_path):
    reference, windows = uninterrupted
    run_dir = tmp_path / "killed"
    killer, seen = kill_a_worker_in_epoch_2(run_dir, lambda pids: pids[0])
    launch(_config(tiny_model_dir, unlabelled, tmp_path, "killed"), windows)
    killer.join(timeout=10)
    assert seen.get("pid") and seen["epoch_2_done_at_kill"] is False, seen
    got = json.loads((run_dir / "epoch_003" / "train_state.json").read_text())
    want = json.loads((Path(reference["run_dir"]) / "epoch_003" / "train_state.json").read_text())
    assert got["starts"] == 2 and want["starts"] == 1 and got["global_step"] == want["global_step"]
    for g, w in zip(got["history"], want["history"], strict=True):
        for key in ("train_loss", "val_loss", "step"):
            assert g[key] == pytest.approx(w[key], abs=1e-4), (g["epoch"], key)
    assert ray.is_initialized()
