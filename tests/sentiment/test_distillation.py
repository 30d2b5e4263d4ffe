"""The distillation loss and the teacher's label check."""

import pytest
import torch
import torch.nn.functional as F

from sentiment.config import ConfigError
from sentiment.distillation import check_teacher_labels, distillation_loss


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g), 3 * torch.randn(8, 3, generator=g)


def test_alpha_zero_is_the_cross_entropy_and_alpha_one_ignores_the_labels():
    logits, labels, teacher = _batch()
    assert torch.equal(distillation_loss(logits, labels, teacher, 0.0, 2.0), F.cross_entropy(logits, labels))
    flipped = (labels + 1) % 3
    assert distillation_loss(logits, labels, teacher, 1.0, 2.0) == pytest.approx(
        float(distillation_loss(logits, flipped, teacher, 1.0, 2.0)))


def test_the_soft_term_is_t_squared_kl_and_vanishes_when_student_matches_teacher():
    logits, labels, teacher = _batch(1)
    t = 4.0
    kl = (F.softmax(teacher / t, -1) * (F.log_softmax(teacher / t, -1) - F.log_softmax(logits / t, -1))).sum(-1).mean()
    assert float(distillation_loss(logits, labels, teacher, 1.0, t)) == pytest.approx(float(t * t * kl), rel=1e-5)
    assert float(distillation_loss(teacher, labels, teacher, 1.0, t)) == pytest.approx(0.0, abs=1e-6)


def test_the_gradient_pulls_the_student_towards_the_teacher():
    logits, labels, teacher = _batch(2)
    student = logits.clone().requires_grad_(True)
    distillation_loss(student, labels, teacher, 1.0, 2.0).backward()
    with torch.no_grad():
        stepped = student - 0.5 * student.grad
    def gap(x: torch.Tensor) -> float:
        return float((F.softmax(x / 2, -1) - F.softmax(teacher / 2, -1)).abs().sum())
    assert gap(stepped) < gap(logits)


def test_a_teacher_with_other_labels_or_order_is_refused():
    check_teacher_labels("t", ["negative", "positive"], ["negative", "positive"])
    for other in (["positive", "negative"], ["negative", "neutral", "positive"]):
        with pytest.raises(ConfigError, match="train.teacher='t' predicts labels"):
            check_teacher_labels("t", other, ["negative", "positive"])
