"""The range test's engine-free parts: the sweep of rates, smoothing, divergence, the suggestion, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentiment.config import ConfigError
from sentiment.lr_range import LossTracker, LrRange, centered_average, plot, suggest


@pytest.mark.parametrize("kwargs, message", [
    ({"min_lr": 1e-3, "max_lr": 1e-5}, "--min-lr 0.001 must be below --max-lr 1e-05"),
    ({"min_lr": 1e-3, "max_lr": 1e-3}, "--min-lr 0.001 must be below --max-lr 0.001"),
    ({"min_lr": 0.0, "max_lr": 1.0}, "must both be positive"),
    ({"steps": 5}, "--steps 5: the range test needs at least 10 steps"),
])
def test_impossible_ranges_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LrRange(**kwargs)


def test_the_rate_grows_exponentially_from_min_to_max():
    rng = LrRange(min_lr=1e-6, max_lr=1e-2, steps=41)
    rates = [rng.min_lr * rng.factor(i) for i in range(rng.steps)]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2)
    assert rates[10] == pytest.approx(1e-5)  # a decade every 10 steps
    assert np.allclose(np.diff(np.log10(rates)), 0.1)


def test_smoothing_is_bias_corrected_and_divergence_stops_the_test():
    tracker = LossTracker(LrRange(smoothing=0.9, diverge_factor=4.0))
    assert not tracker.update(0.7)
    assert tracker.smoothed[0] == pytest.approx(0.7)  # no pull toward 0 at the start
    for _ in range(30):
        assert not tracker.update(0.5)
    assert tracker.smoothed[-1] == pytest.approx(0.5, abs=0.01)
    stops = [tracker.update(10.0) for _ in range(3)]  # smoothed about 1.45, then 2.3 > 4 x 0.5
    assert stops == [False, True, True] and tracker.smoothed[-3] < 2.0 < tracker.smoothed[-2]
    assert LossTracker(LrRange()).update(math.nan)


def curve(noise: float) -> tuple[list[float], list[float]]:
    """Flat at 0.7 to 1e-5, falling fastest around 1e-4, lowest near 1e-3, then climbing; noisy batches."""
    lrs = np.logspace(-7, 0, 71)
    x = np.log10(lrs)
    loss = 0.7 - 0.4 / (1 + np.exp(-(x + 4) * 3)) + np.where(x > -3, (x + 3) ** 2, 0)
    return list(lrs), list(loss + np.random.default_rng(0).normal(0, noise, len(lrs)))


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs, clean = curve(0.0)
    found = suggest(lrs, clean)
    assert 10 ** -4.2 < found.lr < 10 ** -3.8
    assert 10 ** -3.3 < found.min_loss_lr < 10 ** -2.7 and found.min_loss_over_10 == pytest.approx(found.min_loss_lr / 10)


def test_noisy_batches_do_not_move_the_suggestion_far():
    lrs, noisy = curve(0.08)  # single batches swing by +/- 0.08 around the curve
    assert 10 ** -4.5 < suggest(lrs, noisy).lr < 10 ** -3.5
    assert centered_average(noisy).std() < np.std(noisy)


def test_a_curve_too_short_to_read_is_refused():
    with pytest.raises(ValueError, match="recorded 3 finite losses"):
        suggest([1e-5, 1e-4, 1e-3, 1e-2], [0.7, 0.6, 0.5, math.inf])


def test_the_plot_is_a_png(tmp_path):
    lrs = list(np.logspace(-6, -1, 30))
    smoothed = list(np.linspace(0.7, 0.3, 30))
    plot(lrs, smoothed, suggest(lrs, smoothed), tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
