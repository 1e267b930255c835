"""The code repository carries no model weights and no file over 1 MB, and stays small (issue 37): results are
compact JSON, and checkpoints are re-created in reproducible mode or checked out of the commit docs/PROTOCOL.md names."""

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5", ".msgpack")
MAX_FILE_BYTES = 1_000_000
MAX_TREE_BYTES = 20_000_000


@pytest.fixture(scope="module")
def tracked() -> list[Path]:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO_ROOT / name for name in result.stdout.decode().split("\0") if name]


def test_no_weights_tracked(tracked):
    weights = [str(p.relative_to(REPO_ROOT)) for p in tracked if p.name.endswith(WEIGHT_SUFFIXES)]
    assert not weights, f"model files under version control (git rm --cached them): {weights[:10]}"


def test_no_large_file_tracked(tracked):
    large = {
        str(p.relative_to(REPO_ROOT)): p.stat().st_size
        for p in tracked
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES
    }
    assert not large, f"files over {MAX_FILE_BYTES} bytes under version control: {large}"


def test_tracked_tree_is_small(tracked):
    total = sum(p.stat().st_size for p in tracked if p.is_file())
    assert total <= MAX_TREE_BYTES, f"the tracked tree holds {total / 1e6:.1f} MB (at most {MAX_TREE_BYTES / 1e6:.0f})"
