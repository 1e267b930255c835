#!/usr/bin/env bash
# The main job: set up ./.venv, then run the end-to-end demo on the built-in MovingShapes benchmark.
# Extra arguments go to `hf-videomoe demo` (e.g. --output-dir, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1
# The demo's models are tiny: one intra-op thread is faster than two on a 2-core CPU (less OpenMP sync), and much
# faster when anything else runs. Override with OMP_NUM_THREADS.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/hf-videomoe demo "$@"
