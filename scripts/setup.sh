#!/usr/bin/env bash
# Create .venv and install the project with its test extras; safe to run again (skips when done).
# CPU machines get the pinned CPU wheel of torch. On a GPU machine, install the CUDA build of torch
# into .venv first (see README, "One GPU") and set TORCH_SPEC= (empty) so it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (a few minutes the first time)"
  .venv/bin/pip install --quiet --disable-pip-version-check $TORCH_SPEC -e ".[test]"
  # DeepSpeed's CPU all-reduce JIT-compiles a shared-memory op on first use (~35 s): do it now,
  # into this venv's torch extensions cache, which the workers read (ray_jobs/train_loop.py).
  TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions" DS_ACCELERATOR=cpu .venv/bin/python -c \
    "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" >/dev/null
  touch "$stamp"
fi
