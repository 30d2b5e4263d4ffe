"""tests/browser.py: without Chromium a browser test fails with one line naming the setup script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_chromium_fails_the_browser_test_with_one_clear_line(tmp_path):
    missing = tmp_path / "no-chromium"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/sentiment/test_report.py", "-k", "chromium", "-p", "no:cacheprovider",
         "-o", "addopts=", "-q"],
        cwd=ROOT, env={**os.environ, "CHROMIUM_PATH": str(missing)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    expected = f"Chromium is missing ({missing}): install it with `bash scripts/setup-system.sh`"
    assert expected in done.stdout, done.stdout[-2000:]
    assert "Traceback" not in done.stdout and "playwright._impl" not in done.stdout, done.stdout[-2000:]
