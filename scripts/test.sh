#!/usr/bin/env bash
# Set up, then run the test suite but the slow soak (real local Ray, real DeepSpeed, tiny models; ~5 minutes).
# Uses $IMDB_DATA_DIR for real reviews when set. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-browser.sh
# Slow soak tests only run when asked for: bash scripts/test.sh -m slow (any -m picks its own set).
for arg in "$@"; do
    [[ $arg == -m* ]] && exec .venv/bin/python -m pytest "$@"
done
exec .venv/bin/python -m pytest -m "not slow" "$@"
