"""The quick-start notebook executes end to end."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["HF_HUB_OFFLINE"] = "1"
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except Exception as err:  # nbclient's CellExecutionError carries the failing cell's traceback
        pytest.fail(f"notebook failed: {err}")
    assert (tmp_path / "quickstart_out" / "report" / "README.md").is_file()
