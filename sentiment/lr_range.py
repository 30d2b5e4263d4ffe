"""The learning-rate range test (Smith 2015; fastai's and ktrain's ``lr_find``), engine-free parts.

The rate grows exponentially from ``min_lr`` to ``max_lr`` over ``steps`` optimizer steps; the
loss is smoothed with a bias-corrected exponential moving average; the test stops once the
smoothed loss exceeds ``diverge_factor`` times its lowest value (or is not finite).

The suggestion is the rate of steepest descent of the loss against log10(lr), before its
minimum, read from a *centered* moving average of the raw losses (a window of about a tenth of
the steps, at least 7): the online average lags by tens of steps, which put its steepest point
where single batches already blew up on the quickstart's curve, and fastai's "valley" rule (the
longest decreasing stretch) was dragged into the flat start by noise there (bench/RESULTS.md,
"LR range test"). Also given, for reference, the rate of the lowest averaged loss divided by ten
(fastai's older rule). For ``train.schedule=one_cycle`` the suggestion is the cycle's peak rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sentiment.config import ConfigError

RULE = "steepest descent of the centered moving average of the loss against log10(lr), before its minimum"


@dataclass(frozen=True)
class LrRange:
    """The swept range and the stopping rule.

    Raises:
        ConfigError: a bound that is not positive, ``min_lr >= max_lr``, fewer than 10 steps, or a
            smoothing/divergence setting out of range.
    """

    min_lr: float = 1e-7
    max_lr: float = 1.0
    steps: int = 100
    smoothing: float = 0.98  # EMA weight of the past
    diverge_factor: float = 4.0

    def __post_init__(self) -> None:
        if not (self.min_lr > 0 and self.max_lr > 0):
            raise ConfigError(f"--min-lr {self.min_lr:g} and --max-lr {self.max_lr:g} must both be positive")
        if self.min_lr >= self.max_lr:
            raise ConfigError(f"--min-lr {self.min_lr:g} must be below --max-lr {self.max_lr:g}")
        if self.steps < 10:
            raise ConfigError(f"--steps {self.steps}: the range test needs at least 10 steps")
        if not 0 <= self.smoothing < 1 or self.diverge_factor <= 1:
            raise ConfigError("smoothing must be in [0, 1) and diverge_factor above 1")

    def factor(self, step: int) -> float:
        """The multiplier of ``min_lr`` at 0-based ``step``: ``(max/min) ** (step / (steps - 1))``."""
        return (self.max_lr / self.min_lr) ** (step / (self.steps - 1))


class LossTracker:
    """Smooths the loss step by step and says when it diverged."""

    def __init__(self, rng: LrRange) -> None:
        self.rng, self.avg, self.n, self.best = rng, 0.0, 0, math.inf
        self.smoothed: list[float] = []

    def update(self, loss: float) -> bool:
        """Add one step's loss; True when the test should stop (diverged or not finite)."""
        self.n += 1
        self.avg = self.rng.smoothing * self.avg + (1 - self.rng.smoothing) * loss
        value = self.avg / (1 - self.rng.smoothing ** self.n)
        self.smoothed.append(value)
        if not math.isfinite(value):
            return True
        self.best = min(self.best, value)
        return self.n > 1 and value > self.rng.diverge_factor * self.best


@dataclass(frozen=True)
class Suggestion:
    """The suggested rate, the rule behind it, and the min-loss/10 rate for reference."""

    lr: float
    rule: str
    min_loss_lr: float
    min_loss_over_10: float


def centered_average(losses: list[float]) -> np.ndarray:
    """The losses averaged over a centered window of about a tenth of them (odd, at least 7)."""
    window = max(7, round(len(losses) / 10)) | 1
    return pd.Series(losses, dtype=float).rolling(window, center=True, min_periods=1).mean().to_numpy()


def suggest(lrs: list[float], losses: list[float]) -> Suggestion:
    """The suggested rate of a recorded curve of raw losses (see the module docstring).

    Raises:
        ValueError: too few finite points to tell a slope.
    """
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    if len(loss) < 5:
        raise ValueError(f"the range test recorded {len(loss)} finite losses; it needs at least 5 to suggest a rate")
    average = centered_average(list(loss))
    lowest = int(average.argmin())
    slopes = np.gradient(average, np.log10(lr))
    edge = max(7, round(len(loss) / 10)) // 2  # the first points average fewer losses
    steepest = edge + int(slopes[edge:lowest].argmin()) if lowest > edge else lowest
    return Suggestion(lr=float(lr[steepest]), rule=RULE, min_loss_lr=float(lr[lowest]),
                      min_loss_over_10=float(lr[lowest] / 10))


def plot(lrs: list[float], losses: list[float], suggestion: Suggestion, path: str | Path) -> None:
    """The loss against the rate (log scale): raw, averaged, and the suggestion marked; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs, losses, color="#bbb", linewidth=1, label="loss")
    smoothed = list(centered_average(losses))
    ax.plot(lrs, smoothed, color="#1f77b4", linewidth=2, label="loss, centered moving average")
    ax.axvline(suggestion.lr, color="#d62728", linestyle="--", label=f"suggested {suggestion.lr:.2e} (steepest)")
    ax.axvline(suggestion.min_loss_over_10, color="#2ca02c", linestyle=":", label=f"min loss / 10: {suggestion.min_loss_over_10:.2e}")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * min(finite)) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
