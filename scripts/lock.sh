#!/usr/bin/env bash
# Rewrite constraints.txt from .venv: the versions installed now of everything pyproject.toml and
# its test extras need (resolved by uv), so that scripts/setup.sh installs the same ones later.
# torch and its CUDA libraries are left out: TORCH_SPEC in scripts/setup.sh decides those.
# Run after changing pyproject.toml and passing the suite with the new versions.
set -euo pipefail
cd "$(dirname "$0")/.."
installed=$(mktemp)
locked=$(mktemp)
trap 'rm -f "$installed" "$locked"' EXIT
.venv/bin/pip freeze --exclude-editable | grep -v "^torch==" > "$installed"
.venv/bin/python -m uv pip compile pyproject.toml --extra test --constraint "$installed" \
  --python-version "$(.venv/bin/python -c 'import platform; print(platform.python_version())')" --python-platform x86_64-manylinux_2_28 --no-emit-package torch --no-annotate \
  --custom-compile-command "bash scripts/lock.sh" | grep -vE "^(nvidia-|cuda-|triton==)" > "$locked"
mv "$locked" constraints.txt  # only once resolved: a failed resolve leaves the old pins
echo "lock: constraints.txt pins $(grep -c "==" constraints.txt) packages"
