"""ray_jobs.worker's pure parts: the best-epoch rule, optimizer groups, schedules, class weights, the loss.
(The recipes on it run on a real Ray in tests/ray_jobs/test_train.py, tests/ray_jobs/test_pretrain.py,
tests/ray_jobs/test_lr_find.py and tests/system/test_faults.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_jobs.worker import TrainState, build_optimizer, build_scheduler, class_weight_tensor
from sentiment.config import load_config
from sentiment.model import build_model


def test_a_tie_moves_the_best_to_the_later_epoch_but_does_not_reset_patience():
    state = TrainState()
    for epoch, value in enumerate([0.80, 0.82, 0.82, 0.81], start=1):
        state.epoch = epoch
        state.update(value, "max", f"epoch_{epoch:03d}")
    assert (state.best_epoch, state.best_checkpoint, state.best_metric) == (3, "epoch_003", 0.82)
    assert state.bad_epochs == 2  # the tie and the drop: only a strict gain resets patience
    loss = TrainState()
    for epoch, value in enumerate([0.5, 0.4], start=1):
        loss.epoch = epoch
        loss.update(value, "min", f"e{epoch}")
    assert loss.best_epoch == 2 and loss.bad_epochs == 0


def test_no_weight_decay_on_biases_and_layernorm(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "train.weight_decay=0.05"])
    model = build_model(cfg.model)
    decay, no_decay = build_optimizer(model, cfg, torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and any(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_layer_lr_decay_gives_each_depth_its_own_lr_and_the_schedule_keeps_the_ratios(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "train.lr=1e-3", "train.layer_lr_decay=0.5",
                             "train.warmup_steps=0", "train.schedule=linear"])
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    lrs = sorted({round(g["lr"], 12) for g in optimizer.param_groups})
    assert lrs == [2.5e-4, 5e-4, 1e-3]  # embeddings, layer 0, top layer + pooler + head (2 layers)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    embeddings = {id(p) for p in model.bert.embeddings.parameters()}
    (low,) = [g for g in optimizer.param_groups if g["lr"] == pytest.approx(2.5e-4) and g["weight_decay"] > 0]
    assert {id(p) for p in low["params"]} <= embeddings
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert sorted(scheduler.get_last_lr()) == pytest.approx(sorted(g["initial_lr"] / 2 for g in optimizer.param_groups))


@pytest.mark.parametrize("schedule, last_lr", [("linear", 0.0), ("constant", 1e-3)])
def test_warmup_then_the_schedule(tiny_model_dir, schedule, last_lr):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "train.lr=1e-3", "train.warmup_ratio=0.1",
                             f"train.schedule={schedule}"])
    optimizer = build_optimizer(build_model(cfg.model), cfg, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1e-3) and scheduler.get_last_lr()[0] == pytest.approx(last_lr)


def test_balanced_class_weights_are_inverse_frequencies():
    cfg = load_config(None, ["train.class_weights=balanced"])
    weights = class_weight_tensor(cfg, np.array([0, 0, 0, 1]), torch.device("cpu"))
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weight_tensor(load_config(None, []), np.array([0, 1]), torch.device("cpu")) is None  # auto, even
    assert class_weight_tensor(load_config(None, []), np.array([0, 0, 0, 1]), torch.device("cpu")).tolist() == pytest.approx(
        [4 / 6, 2.0])  # auto on an imbalanced split: balanced
    assert class_weight_tensor(load_config(None, ["train.class_weights=none"]), np.array([0, 0, 0, 1]), torch.device("cpu")) is None


def test_one_cycle_rises_to_the_lr_over_the_warmup_then_anneals_and_cycles_momentum(tiny_model_dir):
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "train.lr=1e-3", "train.warmup_ratio=0.3",
                             "train.schedule=one_cycle"])
    optimizer = build_optimizer(build_model(cfg.model), cfg, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg, total_steps=100)
    lrs, betas = [], []
    for _ in range(100):
        lrs.append(scheduler.get_last_lr()[0])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 29
    assert lrs[-1] < 1e-3 / 25 / 1000 and lrs[29:] == sorted(lrs[29:], reverse=True)
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85) and betas[-1] > 0.94


def test_deepspeeds_op_is_built_with_this_venvs_ninja_into_its_cache(monkeypatch):
    import os
    import shutil
    import sys

    from ray_jobs.worker import use_the_prebuilt_deepspeed_op

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as a shell that did not activate the venv (Debian has a ninja)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_the_prebuilt_deepspeed_op()
    assert shutil.which("ninja") == os.path.join(os.path.dirname(sys.executable), "ninja")  # pip's, setup.sh's
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")


def test_the_training_loss_is_cross_entropy_or_with_a_teacher_the_distillation_loss():
    from ray_jobs.worker import training_loss
    from sentiment.distillation import distillation_loss

    torch.manual_seed(0)
    logits, teacher, labels = torch.randn(6, 2), torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 1])
    weights = torch.tensor([2.0, 0.5])
    cfg = load_config(None, ["train.distill_alpha=0.7", "train.distill_temperature=3"])
    ce = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    assert torch.allclose(training_loss(logits, labels, None, cfg, weights), ce)
    distilled = training_loss(logits, labels, teacher, cfg, weights)
    assert torch.allclose(distilled, distillation_loss(logits, labels, teacher, 0.7, 3.0, weights))
    assert not torch.allclose(distilled, ce)


class _Engine:
    """What the loop asks of a DeepSpeed engine: backward, step (the optimizer every
    ``accum`` micro-batches, then the schedule) and the current rate."""

    def __init__(self, accum: int) -> None:
        self.accum, self.micro, self.lrs, self.backwards = accum, 0, [0.1, 0.2, 0.3, 0.4], 0

    def backward(self, loss: torch.Tensor) -> None:
        self.backwards += 1

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.accum == 0:
            self.lrs.pop(0)

    def get_lr(self) -> list[float]:
        return [self.lrs[0]]


def test_optimizer_steps_sum_each_steps_micro_batches_and_name_the_rate_it_used():
    from ray_jobs.worker import optimizer_steps

    engine = _Engine(accum=2)
    steps = list(optimizer_steps(engine, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], lambda x: torch.tensor(x), 2))
    assert [s.loss.item() for s in steps] == [3.0, 7.0, 11.0]
    assert [s.lr for s in steps] == [0.1, 0.2, 0.3]
    assert engine.backwards == 6
