"""Progress lines when the output is not a terminal."""

from __future__ import annotations

import io
import re

from sentiment.progress import Progress


def test_periodic_lines_with_rate_and_eta_then_a_final_line():
    out = io.StringIO()  # not a terminal
    p = Progress(1000, "predict", every_s=0.0, stream=out)
    p.update(250)
    p.update(250)
    p.close()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"predict: 250/1000 reviews \(25\.0%\) [\d.]+ reviews/s ETA \S+", lines[0])
    assert lines[1].startswith("predict: 500/1000 reviews (50.0%)")
    assert re.fullmatch(r"predict: 500/1000 reviews in \S+ \([\d.]+ reviews/s\)", lines[-1])


def test_lines_are_rate_limited():
    out = io.StringIO()
    p = Progress(100, "x", every_s=3600, stream=out)
    for _ in range(100):
        p.update(1)
    assert out.getvalue() == ""
