"""`ruff check` and `ruff format --check` are clean on the whole repository: package, scripts, tests, notebook and the
Python blocks of the Markdown files ([tool.ruff] in pyproject.toml; ruff is pinned in the `dev` extra)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["."]  # the package, scripts, tests, the notebook and the Python blocks of the Markdown files


def ruff() -> list[str]:
    local = Path(sys.executable).with_name("ruff")
    if local.exists():
        return [str(local)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (pip install -e .[dev])")


def test_ruff_check():
    result = subprocess.run([*ruff(), "check", *TARGETS], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_ruff_format():
    result = subprocess.run([*ruff(), "format", "--check", *TARGETS], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
