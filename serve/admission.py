"""Load shedding at the ingress: admit a request only if its windows would start within a time budget.

Serve's ``max_queued_requests`` caps a queue by count, but the time a request waits depends on
what it holds (one short review, or 64 long ones in chunks) and on the hardware (a GPU clears in a
millisecond what two CPU cores clear in a second). :class:`Admission` counts the windows in flight
through this ingress and measures how fast they complete while there is work; a request whose
windows would push the estimated wait past ``max_wait_s`` is refused at once (the HTTP layer
answers 503 with ``Retry-After``) instead of queueing. A floor of ``min_windows`` in flight is
always admitted, so a cold ingress with no measurement yet, or one big request, is never refused
for want of a rate; and never more than ``max_texts`` texts in flight, what the model replicas hold
at once (their ``max_ongoing_requests``: each text is one call, whatever its windows): a text
beyond that would wait in Serve's router, whose waiting calls retry with backoff in no set order,
so in a burst some wait many times longer than the median (bench/RESULTS.md, "Serving under
abuse").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

RATE_INTERVAL_S = 0.5  # completions are folded into the rate at most this often
RATE_WEIGHT = 0.3  # weight of the newest interval in the moving average


class Overloaded(Exception):
    """The endpoint is past its budget; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooCostly(ValueError):
    """A request over a per-request cost cap (windows); the message names the cap."""


class Admission:
    """Windows and texts in flight and the windows' measured completion rate; :meth:`admitted`
    admits or refuses.

    Args:
        max_wait_s: the longest estimated wait (windows ahead / windows per second) to admit.
        min_windows: windows in flight that are always admitted.
        max_texts: texts in flight never exceeded (one text: one window when truncating, or all of
            its windows in ``chunks``).
        clock: seconds, monotonic (a stand-in in tests).
    """

    def __init__(self, max_wait_s: float, min_windows: int, max_texts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait_s, self.min_windows, self.max_texts, self.clock = max_wait_s, min_windows, max_texts, clock
        self.in_flight = 0  # windows
        self.texts = 0
        self.rate: float | None = None  # windows completed per second of busy time
        self._done = 0  # windows completed since the rate was last updated
        self._busy = 0.0  # busy seconds since then
        self._busy_since: float | None = None  # start of the current busy stretch

    def budget(self) -> float:
        """Windows that may be in flight now (the time budget; texts are capped apart)."""
        return max(self.min_windows, (self.rate or 0.0) * self.max_wait_s)

    def requests(self) -> int:
        """Requests that may be in flight now: each holds at least one text and one window."""
        return int(min(self.budget(), self.max_texts))

    def refusal(self, windows: int = 1, texts: int = 1) -> Overloaded | None:
        """Why ``windows`` more in ``texts`` would be refused now, or None if they would be
        admitted. With the defaults of one: whether any request would be refused (the HTTP layer
        then answers 503 from the headers, before reading a body or tokenizing)."""
        if not self.in_flight:
            return None
        if self.in_flight + windows > self.budget():
            work = f", about {self.in_flight / self.rate:.1f} s of work" if self.rate else ""
            return Overloaded(f"overloaded: {self.in_flight} windows in flight{work}; retry shortly")
        if self.texts + texts > self.max_texts:
            return Overloaded(f"overloaded: {self.texts} texts in flight, what the model replicas hold "
                              f"(max_ongoing_requests x max_replicas); retry shortly")
        return None

    @contextmanager
    def admitted(self, windows: int, texts: int = 1) -> Iterator[None]:
        """Hold ``windows`` of ``texts`` in flight for the block.

        Raises:
            Overloaded: the windows ahead plus these would wait longer than ``max_wait_s``, or
                these texts would pass ``max_texts``.
        """
        if refused := self.refusal(windows, texts):
            raise refused
        if self._busy_since is None:
            self._busy_since = self.clock()
        self.in_flight += windows
        self.texts += texts
        try:
            yield
        finally:
            self.in_flight -= windows
            self.texts -= texts
            self._finished(windows)

    def _finished(self, windows: int) -> None:
        """Count completed windows and busy time; fold them into the rate every interval."""
        now = self.clock()
        self._done += windows
        if self._busy_since is not None:
            self._busy += now - self._busy_since
        self._busy_since = now if self.in_flight else None  # idle time never counts
        if self._busy >= RATE_INTERVAL_S:
            sample = self._done / self._busy
            self.rate = sample if self.rate is None else (1 - RATE_WEIGHT) * self.rate + RATE_WEIGHT * sample
            self._done, self._busy = 0, 0.0
