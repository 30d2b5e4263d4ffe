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


def test_no_module_imports_another_of_its_kind() -> None:
    """Shared test helpers live in tests/support.py and fixtures; shared benchmark code in bench/common.py."""
    import ast

    offenders = []
    for folder, kind in (("tests", "tests.test_"), ("bench", "bench.")):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                if module and module.startswith(kind) and module != "bench.common":
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []
