"""Shared fixtures: tiny model configs (fast on 2 CPU cores), script runner and loader. Tests never touch the network."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

TINY_SHAPE = dict(
    image_size=16,
    patch_size=8,
    num_frames=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=8,
)


@pytest.fixture
def tiny_videomae_config():
    """Factory: ``tiny_videomae_config(**overrides)`` -> ``VideoMAEMoeConfig`` (tubelet 2, so 2 time steps x 4 patches).

    ``tiny_videomae_config(dense=True, ...)`` returns the dense ``transformers.VideoMAEConfig`` of the same shape.
    """

    def make(dense: bool = False, **overrides):
        from transformers import VideoMAEConfig

        from hf_videomoe import VideoMAEMoeConfig

        kwargs = {**TINY_SHAPE, "tubelet_size": 2, **overrides}
        return (VideoMAEConfig if dense else VideoMAEMoeConfig)(**kwargs)

    return make


@pytest.fixture
def tiny_timesformer_config():
    """Factory: ``tiny_timesformer_config(**overrides)`` -> ``TimesformerMoeConfig`` (1 CLS + 4 frames x 4 patches).

    ``tiny_timesformer_config(dense=True, ...)`` returns the dense ``transformers.TimesformerConfig``.
    """

    def make(dense: bool = False, **overrides):
        from transformers import TimesformerConfig

        from hf_videomoe import TimesformerMoeConfig

        kwargs = {**TINY_SHAPE, **overrides}
        return (TimesformerConfig if dense else TimesformerMoeConfig)(**kwargs)

    return make


@pytest.fixture
def run_script():
    """Factory: ``run_script(path, *args, cwd=...)`` runs a script offline on one thread, its output captured."""

    def run(*args: str, cwd) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture(scope="session")
def load_script():
    """Factory: ``load_script(name)`` -> the module of ``scripts/<name>.py`` (scripts are not a package), in-process."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Tiny test models only pay thread overhead; several tests also run two processes on two cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
