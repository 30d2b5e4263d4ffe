#!/usr/bin/env bash
# Set up, then run the tests (real local Ray, real DeepSpeed, tiny models). Extra arguments go to pytest.
#   bash scripts/test.sh           the full suite but the slow soak (what CI runs)
#   bash scripts/test.sh --fast    unit tests plus one end-to-end path (train, Predictor, one served
#                                  request): a few minutes, for iterating
#   bash scripts/test.sh -m slow   any -m picks its own set (markers: see pyproject.toml)
# Uses $IMDB_DATA_DIR for real reviews when set.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST="smoke or not (ray or browser or bench or cluster or slow or gpu)"
marker="not slow"
args=()
for arg in "$@"; do
    case $arg in
        --fast) marker=$FAST ;;
        -m*) marker="" ; args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
bash scripts/setup.sh
[[ $marker == "$FAST" ]] || bash scripts/setup-system.sh
exec .venv/bin/python -m pytest ${marker:+-m "$marker"} "${args[@]}"
