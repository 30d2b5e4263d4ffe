"""The house rules a machine checks: ruff over every Python file, mypy over the pure core.

Both read their settings from pyproject.toml (``[tool.ruff]``: line length 140, pycodestyle,
pyflakes and import order; ``[tool.mypy]``: ``sentiment/`` with pydantic's plugin), so a developer
runs the same checks with ``.venv/bin/ruff check .`` and ``.venv/bin/mypy``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    checked = run("ruff", "check", "--no-cache", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_core_type_checks() -> None:
    checked = run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert checked.returncode == 0 and "Success" in checked.stdout, checked.stdout + checked.stderr
