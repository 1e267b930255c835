#!/usr/bin/env bash
# Set up ./.venv and run the test suite (tests marked `slow` are excluded; run them with `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# One torch thread per process: the test models are tiny (threads only add overhead), and pytest-xdist runs two
# workers, one per core of a CI machine. --dist loadfile keeps each test file on one worker, so a file's module
# fixtures (trained tiny models) are built once. HF_VIDEOMOE_TEST_WORKERS=0 runs the suite in this process.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg OMP_NUM_THREADS=1
WORKERS="${HF_VIDEOMOE_TEST_WORKERS:-2}"
exec .venv/bin/python -m pytest -m "not slow" -x -q -p no:cacheprovider -n "$WORKERS" --dist loadfile "$@"
