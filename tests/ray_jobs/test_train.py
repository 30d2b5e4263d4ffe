"""ray_jobs.train (the launcher and the ray_jobs.train_loop recipe) on the real path: a local Ray, 2 CPU workers,
DeepSpeed ZeRO-2 and a tiny BERT for a few steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ray_jobs.launcher import check_resources, check_resume_from, launch, prepare_data
from sentiment.config import ConfigError, load_config
from sentiment.precision import auto_precision
from sentiment.predict import Predictor
from tests.conftest import imdb_dir
from tests.support import kept_shape, shrink, smoke_config
from tests.wandb_log import logged_keys, records

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 128 // (16 * 2)  # train reviews / (micro-batch x workers)


@pytest.fixture(scope="module")
def trained(local_ray, smoke_run):
    return smoke_run


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "train_state.json").read_text())


def test_every_epoch_is_checkpointed_with_both_ranks_shards(trained):
    cfg, summary = trained
    run = Path(summary["run_dir"])
    for epoch in (1, 2):
        ckpt = run / f"epoch_{epoch:03d}"
        assert _state(ckpt)["global_step"] == epoch * STEPS_PER_EPOCH
        shards = sorted(p.name for p in (ckpt / "deepspeed" / "state").glob("zero_pp_rank_*_optim_states.pt"))
        assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
        assert (ckpt / "model" / "model.safetensors").is_file()
    assert json.loads((run / "result.json").read_text())["last_checkpoint"] == str(run / "epoch_002")
    assert summary["test_metrics"]["test_count"] == 64  # the accuracy floor is tests/system/test_smoke.py's
    assert summary["best_metrics"]["val_count"] == 64  # every validation review scored once across both ranks


LOAD_WITHOUT_ENGINES = """
import sys, json
for name in ("ray", "deepspeed", "wandb"):
    sys.modules[name] = None
from sentiment.data import load_splits
from sentiment.metrics import compute_metrics
from sentiment.predict import Predictor
p = Predictor.load(sys.argv[1])
test = load_splits(p.cfg.data, p.cfg.model.label_names)["test"]
encoded = p.encode(test["text"])
m = compute_metrics(p.logits(encoded), test["label"], p.label_names)
print(json.dumps({"loss": m["loss"], "accuracy": m["accuracy"], "windows": int(encoded.counts.sum())}))
"""


def test_checkpoint_loads_without_ray_and_reproduces_the_workers_logits(trained):
    _, summary = trained
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_ENGINES, summary["best_checkpoint"]],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    test = summary["test_metrics"]
    assert got["loss"] == pytest.approx(test["test_loss"], abs=1e-5)
    assert got["accuracy"] == test["test_accuracy"]
    assert got["windows"] > test["test_count"] or imdb_dir() is None  # real reviews: chunked (synthetic ones are short)


def test_auto_precision_is_recorded_as_what_ran_on_this_cpu(trained):
    cfg, summary = trained
    model = Path(summary["best_checkpoint"]) / "model"
    recorded = json.loads((model / "train_config.json").read_text())["train"]["precision"]
    assert cfg.train.precision == "auto" and recorded == auto_precision(torch.device("cpu"))
    assert Predictor.load(model).backend.dtype == ("bfloat16" if recorded == "bf16" else "float32")


def test_resume_continues_at_the_saved_step_with_the_same_result(trained, tiny_model_dir, small_imdb):
    cfg, summary = trained
    run = Path(summary["run_dir"])
    resumed_cfg = smoke_config(tiny_model_dir, small_imdb, cfg.run.storage_path, "resumed", "tracking.mode=disabled",
                               f"run.resume_from={run / 'epoch_001'}")
    resumed = launch(resumed_cfg, prepare_data(resumed_cfg))
    new_run = Path(resumed["run_dir"])
    assert not (new_run / "epoch_001").exists()  # epoch 1 was not redone
    state = _state(new_run / "epoch_002")
    assert state["global_step"] == 2 * STEPS_PER_EPOCH and [h["epoch"] for h in state["history"]] == [1, 2]
    original = _state(run / "epoch_002")["history"][-1]
    # Same weights, optimizer moments, LR schedule and data order: epoch 2 comes out the same.
    assert state["history"][-1]["val_loss"] == pytest.approx(original["val_loss"], abs=1e-4)
    assert state["history"][-1]["train_loss"] == pytest.approx(original["train_loss"], abs=1e-4)


def test_corrupt_resume_checkpoint_fails_with_a_clear_error(trained, tiny_model_dir, small_imdb, tmp_path):
    cfg, summary = trained
    broken = tmp_path / "broken"
    shutil.copytree(Path(summary["run_dir"]) / "epoch_001", broken)
    for f in (broken / "deepspeed" / "state").glob("*model_states.pt"):
        f.write_bytes(b"not a checkpoint")
    bad = smoke_config(tiny_model_dir, small_imdb, tmp_path / "runs", "broken", "tracking.mode=disabled",
                       f"run.resume_from={broken}")
    with pytest.raises(Exception, match="cannot resume from checkpoint"):
        launch(bad, prepare_data(bad))


def test_incomplete_resume_checkpoint_fails_before_ray(tmp_path, tiny_model_dir, small_imdb):
    (tmp_path / "ckpt" / "model").mkdir(parents=True)
    cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path, "x", f"run.resume_from={tmp_path / 'ckpt'}")
    with pytest.raises(ConfigError, match="no train_state.json"):
        check_resume_from(cfg)


def test_more_workers_than_cpus_or_gpus_is_refused(local_ray, tiny_model_dir, small_imdb, tmp_path):
    cfg = smoke_config(tiny_model_dir, small_imdb, tmp_path, "x", "scaling.num_workers=3")
    with pytest.raises(ConfigError, match="needs 3 CPU in all, but the cluster has 2;"):
        check_resources(cfg)
    gpu = smoke_config(tiny_model_dir, small_imdb, tmp_path, "x", "scaling.use_gpu=true")
    with pytest.raises(ConfigError, match="needs 2 GPU in all, but the cluster has 0;"):
        check_resources(gpu)
    check_resources(smoke_config(tiny_model_dir, small_imdb, tmp_path, "x"))


def test_wandb_offline_run_recorded_the_metrics(trained):
    _, summary = trained
    [run_file] = Path(summary["run_dir"], "wandb").glob("wandb/offline-run-*/run-*.wandb")
    history, final = logged_keys(run_file)
    assert {"train/loss", "train/lr", "train/samples_per_s", "val/accuracy", "val/f1", "test/accuracy"} <= history
    assert {"test_accuracy", "test_f1"} <= final
    artifacts = [r for r in records(run_file) if r.WhichOneof("record_type") == "artifact"]
    assert any(a.artifact.type == "model" and "best" in a.artifact.aliases for a in artifacts)


def test_layer_lr_decay_and_gradient_checkpointing_train_on_ray(local_ray, tiny_long_model_dir, small_imdb, tmp_path):
    """With decay 0.5 over 2 layers the embeddings train at a quarter of the top layer's lr: Adam
    moves each weight by about its lr per step, so they move about a quarter as far."""
    from safetensors.torch import load_file

    cfg, _ = shrink("bert-base", tiny_long_model_dir, small_imdb, tmp_path, "train.lr=1e-3",  # configs/bert-base.yaml, shrunk
                    "train.layer_lr_decay=0.5", "train.gradient_checkpointing=true", "train.warmup_steps=0",
                    "train.schedule=constant")
    summary = launch(cfg)
    before = load_file(str(tiny_long_model_dir / "model.safetensors"))
    after = load_file(str(Path(summary["best_checkpoint"]) / "model" / "model.safetensors"))

    def moved(name: str) -> float:
        return float((after[name] - before[name]).abs().mean())

    top, bottom = "bert.encoder.layer.1.output.LayerNorm.weight", "bert.embeddings.LayerNorm.weight"
    assert 0.1 < moved(bottom) / moved(top) < 0.5
    saved = json.loads((Path(summary["best_checkpoint"]) / "model" / "train_config.json").read_text())["train"]
    assert saved["layer_lr_decay"] == 0.5 and saved["gradient_checkpointing"] is True


def test_the_distillation_config_shrunk_distils_a_shallower_student_with_teacher_logits_from_ray_data(
        trained, tiny_long_model_dir, small_imdb, tmp_path):
    """configs/minilm-distill-full.yaml, shrunk (its 512-token shape kept) onto a one-layer student of the
    smoke run, twice: all cross-entropy (``distill_alpha=0``) and all the teacher's (``=1``)."""
    import numpy as np

    from sentiment.data import load_splits

    teacher = trained[1]["run_dir"]
    student = [f"train.teacher={teacher}", "model.num_hidden_layers=1"]
    hard, raw = shrink("minilm-distill-full", tiny_long_model_dir, small_imdb, tmp_path / "alpha0", *student, "train.distill_alpha=0")
    soft, _ = shrink("minilm-distill-full", tiny_long_model_dir, small_imdb, tmp_path / "alpha1", *student, "train.distill_alpha=1")
    data = prepare_data(hard)  # the teacher scores the training reviews once; both runs share them
    texts = load_splits(hard.data, hard.model.label_names)["train"]["text"]
    predictor = Predictor.load(teacher, long_reviews="truncate")  # one window per review, at the teacher's own length
    assert np.allclose(data["train"].teacher_logits, predictor.logits(predictor.encode(texts), 32), atol=1e-4)
    assert data["validation"].teacher_logits is None

    runs = [launch(cfg, data) for cfg in (hard, soft)]
    losses = [run["best_metrics"]["train_loss"] for run in runs]
    assert abs(losses[0] - losses[1]) > 1e-3  # same seed and data: only the loss differs
    model_dir = Path(runs[1]["best_checkpoint"]) / "model"
    assert json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] == 1
    assert kept_shape(model_dir, raw)["train"]["teacher"] == teacher
    assert runs[1]["test_metrics"]["test_count"] == 16
    assert Predictor.load(runs[1]["run_dir"]).predict(["a fine film"]) in (["negative"], ["positive"])


def test_a_teacher_with_other_labels_is_refused_before_training(trained, tiny_model_dir, small_imdb, tmp_path):
    from ray_jobs.launcher import check_teacher

    teacher = trained[1]["run_dir"]
    other = smoke_config(tiny_model_dir, small_imdb, tmp_path, "x", f"train.teacher={teacher}",
                         "model.label_names=[bad,good]")
    with pytest.raises(ConfigError, match=r"train.teacher=.*\['negative', 'positive'\].*\['bad', 'good'\]"):
        check_teacher(other)
    missing = smoke_config(tiny_model_dir, small_imdb, tmp_path, "y", f"train.teacher={tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="train.teacher: checkpoint .*nothing.* does not exist"):
        check_teacher(missing)


def test_the_final_lines_flag_a_weak_class():
    from ray_jobs.train import weak_classes_line

    cfg = load_config(None, ["model.num_labels=3", "model.label_names=[low, mid, high]"])
    summary = {"test_metrics": {"test_confusion_matrix": [[80, 15, 5], [20, 10, 30], [0, 15, 85]]}}
    assert weak_classes_line(cfg, summary) == (
        "warning: weak classes on the test split (F1 under 0.5): 'mid': F1 0.20, recall 17%, most misses predicted 'high'")
    summary["test_metrics"]["test_confusion_matrix"] = [[80, 10, 10], [10, 80, 10], [10, 10, 80]]
    assert weak_classes_line(cfg, summary) is None
    assert weak_classes_line(cfg, {"test_metrics": None}) is None  # a cross-validation fold: no test split
