#!/usr/bin/env bash
# GPU check for a person with one CUDA GPU (under 5 minutes): both MoE models, the attacks and a few J-TLAT steps in
# bf16, eager vs grouped_mm equivalence; writes docs/gpu_check.md. Installs into ./.venv like the other scripts; set
# HF_VIDEOMOE_TORCH (and PIP_EXTRA_INDEX_URL) for the CUDA build of torch that matches the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python scripts/gpu_check.py "$@"
