#!/usr/bin/env bash
# Set up ./.venv and run the test suite (tests marked `slow` are excluded; run them with `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# One torch thread: the test models are tiny (threads only add overhead) and several tests run 2 processes.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -m "not slow" -x -q -p no:cacheprovider "$@"
