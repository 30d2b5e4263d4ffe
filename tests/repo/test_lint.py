"""The house rules a machine checks: ruff over every Python file, mypy over the pure core, tests that
mirror the modules and import no other test module.

Both read their settings from pyproject.toml (``[tool.ruff]``: line length 140, pycodestyle,
pyflakes and import order; ``[tool.mypy]``: ``sentiment/`` with pydantic's plugin), so a developer
runs the same checks with ``.venv/bin/ruff check .`` and ``.venv/bin/mypy``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    checked = run("ruff", "check", "--no-cache", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_core_type_checks() -> None:
    checked = run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert checked.returncode == 0 and "Success" in checked.stdout, checked.stdout + checked.stderr


def test_no_module_imports_another_of_its_kind() -> None:
    """Shared test helpers live in tests/support.py and fixtures (and the client scripts beside them);
    shared benchmark code in bench/common.py."""
    offenders = []
    for folder in ("tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                if module and (module.startswith("tests.") and module.rpartition(".")[2].startswith("test_")
                               or folder == "bench" and module.startswith("bench.") and module != "bench.common"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


# Modules whose tests live in another module's file, and why: each file named here must name the module.
TESTED_ELSEWHERE = {
    "sentiment.backends": "tests/sentiment/test_export.py",  # the sessions over what export writes
    "ray_jobs.export": "tests/sentiment/test_export.py",  # the command runs there, on the export it writes
    "ray_jobs.evaluate": "tests/ray_jobs/test_batch_inference.py",  # both commands are Ray Data batch jobs
    "ray_jobs.predict": "tests/ray_jobs/test_batch_inference.py",
    "ray_jobs.train_loop": "tests/ray_jobs/test_train.py",  # the recipe runs only inside a training run
    "serve.deployment": "tests/serve/test_app.py",  # the deployment build_app binds, on a real Serve
    "bench.abuse": "tests/system/test_serve_hostile.py",  # its phases, against the hardened endpoint
}


def test_tests_mirror_the_modules() -> None:
    """Every module of the four packages and bench/ has tests/<package>/test_<module>.py, or its tests
    are in the one file TESTED_ELSEWHERE names, which names it."""
    missing = []
    for package in ("sentiment", "ray_jobs", "serve", "tune", "bench"):
        for source in sorted((ROOT / package).glob("*.py")):
            module = f"{package}.{source.stem}"
            if source.stem == "__init__" or (ROOT / "tests" / package / f"test_{source.stem}.py").is_file():
                continue
            elsewhere = TESTED_ELSEWHERE.get(module)
            text = (ROOT / elsewhere).read_text() if elsewhere else ""
            if module not in text and f"{package}/{source.stem}.py" not in text:
                missing.append(module)
    assert missing == []
    assert not [m for m in TESTED_ELSEWHERE if (ROOT / "tests" / m.split(".")[0] / f"test_{m.split('.')[1]}.py").is_file()]
