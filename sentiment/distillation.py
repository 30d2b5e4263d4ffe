"""Knowledge distillation: the student learns from a teacher's logits as well as the labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sentiment.config import ConfigError


def check_teacher_labels(teacher: str, teacher_labels: list[str], student_labels: list[str]) -> None:
    """Refuse a teacher whose classes are not the student's, in the same order.

    Raises:
        ConfigError: naming the teacher and both label lists.
    """
    if list(teacher_labels) != list(student_labels):
        raise ConfigError(
            f"train.teacher={teacher!r} predicts labels {list(teacher_labels)}, but the student's "
            f"model.label_names are {list(student_labels)}: a teacher must have the same labels in the same order"
        )


def distillation_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
    alpha: float, temperature: float, weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(1 - alpha) * CE(logits, labels) + alpha * T^2 * KL(softmax(teacher/T) || softmax(logits/T))``.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard one's (Hinton et al.
    2015), so ``alpha`` means the same at any temperature. ``weight`` weighs the classes in the
    cross-entropy only.
    """
    logits = logits.float()
    hard = F.cross_entropy(logits, labels, weight=weight)
    if alpha == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1), F.log_softmax(teacher_logits.float() / temperature, dim=-1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft
