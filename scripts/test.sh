#!/usr/bin/env bash
# Set up, then run the whole test suite (real local Ray, real DeepSpeed, tiny models; ~5 minutes).
# Uses $IMDB_DATA_DIR for real reviews when set. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-browser.sh
exec .venv/bin/python -m pytest "$@"
