"""Progress of a long loop: a tqdm bar on a terminal, a line every few seconds in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts items done of ``total``, showing rate and ETA.

    On a terminal it draws a tqdm bar; otherwise (``ray job submit`` logs, CI) it prints
    ``label: done/total (pct) rate unit/s ETA ...`` at most every ``every_s`` seconds, and once
    at the end.
    """

    def __init__(self, total: int, label: str, unit: str = "reviews", every_s: float = 10.0, stream: TextIO | None = None) -> None:
        self.total, self.label, self.unit, self.every_s = total, label, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last_line = time.perf_counter()
        self.bar = tqdm(total=total, desc=label, unit=unit.rstrip("s"), file=self.stream) if self.stream.isatty() else None

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        """The status line: done, share, rate and ETA."""
        eta = (self.total - self.done) / self.rate if self.done else float("nan")
        eta_text = _duration(eta) if self.done else "?"
        pct = 100.0 * self.done / max(self.total, 1)
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.1f}%) {self.rate:.1f} {self.unit}/s ETA {eta_text}"

    def update(self, n: int) -> None:
        """Add ``n`` finished items."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last_line >= self.every_s:
            self.last_line = time.perf_counter()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> float:
        """Finish the bar or print the last line; returns the overall rate."""
        if self.bar is not None:
            self.bar.close()
        elapsed = _duration(time.perf_counter() - self.start)
        print(f"{self.label}: {self.done}/{self.total} {self.unit} in {elapsed} ({self.rate:.1f} {self.unit}/s)",
              file=self.stream, flush=True)
        return self.rate
