"""serve.admission: load shedding by the measured completion rate, on a stand-in clock."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from serve.admission import Admission, Overloaded


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve_at(admission: Admission, clock: Clock, rate: float, seconds: float, windows: int = 1) -> None:
    """Keep the ingress busy for ``seconds``, completing ``windows`` at a time at ``rate`` windows/s."""
    for _ in range(round(seconds * rate / windows)):
        with admission.admitted(windows):
            clock.now += windows / rate


def test_a_cold_ingress_admits_up_to_its_floor_then_refuses_at_once():
    admission = Admission(max_wait_s=1.0, min_windows=4, max_texts=10_000, clock=Clock())
    with admission.admitted(3), admission.admitted(1):
        with pytest.raises(Overloaded, match="4 windows in flight"):
            with admission.admitted(1):
                pass
    assert admission.in_flight == 0
    with admission.admitted(40):  # one big request alone is never refused for want of a rate
        assert admission.in_flight == 40
        assert "40 windows in flight" in str(admission.refusal())  # any more would be: the gate's 503
    assert admission.refusal() is None


def test_the_gates_question_is_whether_one_more_window_would_be_admitted():
    admission = Admission(max_wait_s=1.0, min_windows=4, max_texts=10_000, clock=Clock())
    with admission.admitted(3):
        assert admission.refusal() is None and admission.refusal(2) is not None
        with admission.admitted(1):
            assert admission.refusal() is not None


@pytest.mark.parametrize("rate", [20.0, 2000.0])
def test_the_budget_is_the_measured_rate_times_the_wait(rate):
    clock = Clock()
    admission = Admission(max_wait_s=1.0, min_windows=4, max_texts=10_000, clock=clock)
    serve_at(admission, clock, rate, seconds=3.0)
    assert admission.rate == pytest.approx(rate, rel=1e-6)
    assert admission.budget() == pytest.approx(rate)
    admitted = 0
    with ExitStack() as held, pytest.raises(Overloaded):
        while True:  # hold windows until the estimated wait would pass max_wait_s
            held.enter_context(admission.admitted(1))
            admitted += 1
    assert abs(admitted - rate) <= 1  # the budget, give or take rounding


def test_idle_time_does_not_lower_the_rate():
    clock = Clock()
    admission = Admission(max_wait_s=1.0, min_windows=1, max_texts=10_000, clock=clock)
    for _ in range(10):
        serve_at(admission, clock, 100.0, seconds=0.1, windows=5)
        clock.now += 60.0  # a minute with nothing to do
    assert admission.rate == pytest.approx(100.0, rel=1e-6)


def test_never_more_texts_than_the_replicas_hold_however_fast_they_are():
    clock = Clock()
    admission = Admission(max_wait_s=1.0, min_windows=4, max_texts=64, clock=clock)
    serve_at(admission, clock, 5000.0, seconds=1.0, windows=50)
    assert admission.budget() == pytest.approx(5000.0) and admission.requests() == 64
    with admission.admitted(60, texts=60), pytest.raises(Overloaded, match="60 texts in flight"):
        with admission.admitted(5, texts=5):
            pass


def test_a_text_of_many_windows_holds_one_of_the_replicas_places():
    """Whole reviews (chunks): a text is one call to a model replica, whatever its windows."""
    clock = Clock()
    admission = Admission(max_wait_s=1.0, min_windows=4, max_texts=8, clock=clock)
    serve_at(admission, clock, 1000.0, seconds=1.0, windows=3)
    with ExitStack() as held:
        for _ in range(8):  # 8 texts of 3 windows: 24 windows, past a cap of 8 counted in windows
            held.enter_context(admission.admitted(3, texts=1))
        assert admission.in_flight == 24 and admission.texts == 8
        assert "8 texts in flight" in str(admission.refusal(3))
    assert admission.texts == 0 and admission.refusal() is None
