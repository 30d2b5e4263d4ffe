"""The repository speaks of the product alone: no file outside the tests says how its development
was organised (who measured, in which sitting, on whose lent hardware). Headings and figures name
the benchmark, the machine and the date; a figure that does not exist is "not measured yet"."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDINAL = r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|\d+(st|nd|rd|th))"
PROCESS = re.compile(
    rf"\b({ORDINAL}|earlier|previous|next|this|last|another|every|any) sessions?\b"  # a sitting, not Ray's or ONNX Runtime's
    r"|\blent\b|\b(another|other) engineers?\b|\bengineer's\b|\bno GPU (has|had) been (lent|available)",
    re.IGNORECASE,
)


def tracked_files() -> list[Path]:
    """Every file git tracks, but the tests (which name the vocabulary to refuse it)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if not n.startswith("tests/") and (ROOT / n).is_file()]


def test_no_file_speaks_of_how_the_work_was_organised():
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
                  for m in PROCESS.finditer(text)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("line", [
    "## bf16 (2026-12-01, tenth session)", "measured in the 3rd session", "no GPU has been lent to any session",
    "shared with another engineer's Ray tests", "run on the lent GPU", "as the earlier sessions did",
])
def test_the_check_catches_each_kind_of_remark(line):
    assert PROCESS.search(line), line


@pytest.mark.parametrize("line", [
    "an ONNX Runtime session with 2 threads", "Ray's session logs", "aiohttp.ClientSession()", "a session-scoped fixture",
    "sessionStorage", "ML engineers who submit training",
])
def test_the_check_leaves_the_products_own_words(line):
    assert not PROCESS.search(line), line
