"""scripts/setup.sh and constraints.txt: missing build parts fail with one line; the suite runs on
the pinned versions, from bytecode setup wrote."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_a_missing_compiler_fails_with_one_line_naming_it(tmp_path):
    done = _setup(tmp_path, CXX=str(tmp_path / "no-c++"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"setup: no C++ compiler ({tmp_path / 'no-c++'}): DeepSpeed compiles its CPU op at install; "
        "Debian/Ubuntu: apt-get install g++"]


def test_missing_python_headers_fail_with_one_line_naming_them(tmp_path):
    fake = tmp_path / "python3"  # a Python whose include folder holds no Python.h
    fake.write_text(f"#!/bin/sh\necho {tmp_path / 'include'}\n")
    fake.chmod(0o755)
    done = _setup(tmp_path, PYTHON=str(fake))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"setup: no Python headers ({tmp_path / 'include' / 'Python.h'}): DeepSpeed compiles against them; "
        "Debian/Ubuntu: apt-get install python3-dev"]


def test_the_suite_runs_on_the_versions_constraints_txt_pins():
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    for package in ("schemathesis", "wandb", "hypothesis", "playwright", "ray", "deepspeed", "transformers"):
        assert package in pins, package  # what the tests lean on is pinned
    assert "torch" not in pins  # TORCH_SPEC decides torch (CPU or CUDA build)
    for package, pinned in pins.items():
        try:
            assert version(package) == pinned, package
        except PackageNotFoundError:
            pytest.fail(f"{package}=={pinned} is pinned but not installed: run scripts/setup.sh")


@pytest.mark.parametrize("package", ["torch", "transformers", "ray", "pandas", "deepspeed"])
def test_setup_wrote_the_bytecode_every_ray_worker_imports(package):
    """Without it (PYTHONDONTWRITEBYTECODE set) each worker compiles these packages from source."""
    source = importlib.util.find_spec(package).origin
    assert Path(importlib.util.cache_from_source(source)).is_file(), f"no bytecode for {source}: run scripts/setup.sh"
