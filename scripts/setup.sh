#!/usr/bin/env bash
# Create .venv and install the project with its test extras; safe to run again (skips when done).
#
# What it does, in order:
#  1. checks what DeepSpeed needs to build: a C++ compiler (DeepSpeed installs from source and
#     JIT-compiles its CPU shared-memory op) and the Python headers (Python.h); one line names
#     what is missing;
#  2. installs torch ($TORCH_SPEC, default torch==2.13.0) from pip's configured indexes, or from
#     $TORCH_INDEX when set (PyTorch's CPU wheel index gives the CPU build on any machine:
#     TORCH_INDEX=https://download.pytorch.org/whl/cpu); plain PyPI serves the CUDA build on Linux;
#  3. installs the project and its test extras with the versions in constraints.txt (the ones the
#     suite was written against), then JIT-compiles DeepSpeed's op and says which torch it got.
# On a GPU machine, install the CUDA build of torch into .venv first and set TORCH_SPEC= (empty)
# so it is kept (docs/install.md, "One GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CXX=${CXX:-c++}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}

fail() { echo "setup: $*" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || fail "no Python: $PYTHON not found (Python >= 3.11; set PYTHON=...)"
command -v "$CXX" >/dev/null \
  || fail "no C++ compiler ($CXX): DeepSpeed compiles its CPU op at install; Debian/Ubuntu: apt-get install g++"
headers=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[ -f "$headers/Python.h" ] \
  || fail "no Python headers ($headers/Python.h): DeepSpeed compiles against them; Debian/Ubuntu: apt-get install python3-dev"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (a few minutes the first time)"
  # --no-compile: pip would compile every file on one core; compileall below does it on every core.
  pip=(.venv/bin/pip install --quiet --disable-pip-version-check --no-compile)
  if [ -n "$TORCH_SPEC" ]; then
    "${pip[@]}" -c constraints.txt ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
  fi
  "${pip[@]}" -c constraints.txt -e ".[test]"
  # DeepSpeed's CPU all-reduce JIT-compiles a shared-memory op on first use (~35 s, one core): do it
  # now, into this venv's torch extensions cache, with this venv's ninja, as the workers will
  # (ray_jobs/train_loop.py: use_the_prebuilt_deepspeed_op); in the background, beside compileall.
  PATH="$PWD/.venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions" DS_ACCELERATOR=cpu .venv/bin/python -c \
    "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" >/dev/null &
  op_build=$!
  # Bytecode for every installed module, written now (~45 s on 2 cores): with PYTHONDONTWRITEBYTECODE
  # set, as on some machines, no process would ever write it, and every Ray worker, replica and job
  # would compile torch, transformers, Ray and pandas from source at each start (10.5 s of CPU
  # to import them, against 3.8 s from bytecode). A few test files of other Python versions do not
  # compile; that is expected, hence the `|| true`.
  .venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null 2>&1 || true
  wait "$op_build" || fail "DeepSpeed's CPU op did not compile (rerun: bash scripts/setup.sh)"
  touch "$stamp"
  .venv/bin/python -c "import torch; print(f'setup: torch {torch.__version__}, ' + (f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU build'))"
fi
