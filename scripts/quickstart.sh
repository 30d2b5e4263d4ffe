#!/usr/bin/env bash
# Set up, then fine-tune the packaged MiniLM on IMDB with Ray Train + DeepSpeed on this machine's
# CPUs (Ray in-process, W&B offline unless WANDB_API_KEY is set). Data: $IMDB_DATA_DIR, else the hub.
# Extra arguments are config overrides, e.g. `bash scripts/quickstart.sh train.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m ray_jobs.train --config configs/quickstart.yaml "$@"
