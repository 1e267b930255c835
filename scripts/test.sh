#!/usr/bin/env bash
# Set up ./.venv and run the test suite (tests marked `slow` are excluded; run them with `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/python -m pytest -m "not slow" -x -q -p no:cacheprovider "$@"
