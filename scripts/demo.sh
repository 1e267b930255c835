#!/usr/bin/env bash
# The main job: set up ./.venv, then run the end-to-end demo on the built-in MovingShapes benchmark.
# Extra arguments go to `hf-videomoe demo` (e.g. --output-dir, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/hf-videomoe demo "$@"
