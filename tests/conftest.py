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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(params=["videomae", "timesformer"])
def model_family(request):
    """The model family, ``"videomae"`` or ``"timesformer"``: a test asking for it runs once per family.

    ``@pytest.mark.parametrize("model_family", ["videomae"])`` narrows a test (and the fixtures below) to one family.
    """
    return request.param


@pytest.fixture
def make_config(model_family, tiny_videomae_config, tiny_timesformer_config):
    """Factory: ``make_config(**overrides)`` -> ``model_family``'s tiny config (one of the two factories above)."""
    return tiny_videomae_config if model_family == "videomae" else tiny_timesformer_config


@pytest.fixture
def moe_class(model_family):
    """``model_family``'s MoE classifier class (``VideoMAEMoeForVideoClassification`` or the TimeSformer one)."""
    import hf_videomoe

    return {
        "videomae": hf_videomoe.VideoMAEMoeForVideoClassification,
        "timesformer": hf_videomoe.TimesformerMoeForVideoClassification,
    }[model_family]


@pytest.fixture
def dense_class(model_family):
    """``model_family``'s dense transformers classifier class, the one ``from_dense`` upcycles."""
    import transformers

    return {
        "videomae": transformers.VideoMAEForVideoClassification,
        "timesformer": transformers.TimesformerForVideoClassification,
    }[model_family]


@pytest.fixture
def make_moe_model(moe_class, make_config):
    """Factory: ``make_moe_model(seed=0, **overrides)`` -> ``model_family``'s tiny MoE classifier in eval mode.

    Built after ``manual_seed(seed)``, so two calls with the same arguments give the same weights. Unlike
    ``tiny_moe_model`` (VideoMAE only, 4 experts, train mode) it follows ``model_family`` and the config defaults.
    """

    def make(seed: int = 0, **overrides):
        import torch

        torch.manual_seed(seed)
        return moe_class(make_config(**overrides)).eval()

    return make


@pytest.fixture(scope="session")
def tiny_moe_model(tiny_videomae_config):
    """Factory: ``tiny_moe_model(seed=0, **overrides)`` -> a 4-expert VideoMAE-MoE built after ``manual_seed(seed)``."""

    def make(seed: int = 0, **overrides):
        import torch

        from hf_videomoe import VideoMAEMoeForVideoClassification

        torch.manual_seed(seed)
        return VideoMAEMoeForVideoClassification(tiny_videomae_config(**{"num_experts": 4, **overrides}))

    return make


@pytest.fixture(scope="session")
def tiny_dense_model(tiny_videomae_config):
    """Factory: ``tiny_dense_model(seed=0)`` -> the dense VideoMAE classifier of the tiny shape, in eval mode."""

    def make(seed: int = 0):
        import torch
        from transformers import VideoMAEForVideoClassification

        torch.manual_seed(seed)
        return VideoMAEForVideoClassification(tiny_videomae_config(dense=True)).eval()

    return make


@pytest.fixture(scope="session")
def model_labelled_clips():
    """Factory: ``model_labelled_clips(model, n, seed=1, wrong=0)`` -> clips the model labels, ``wrong`` shifted."""

    def make(model, n: int, seed: int = 1, wrong: int = 0):
        import torch

        x = torch.rand(n, 4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = model(pixel_values=x).logits.argmax(-1)
        y[:wrong] = (y[:wrong] + 1) % model.config.num_labels
        return [{"pixel_values": x[i], "labels": int(y[i])} for i in range(n)]

    return make


@pytest.fixture(scope="session")
def motion_trained_moe(tiny_moe_model):
    """Factory: ``motion_trained_moe(**overrides)`` -> (model, test clips, test labels), 60 steps on ``make_motion``."""

    def make(**overrides):
        import torch
        from motion_data import make_motion

        model = tiny_moe_model(num_labels=4, **overrides)
        x_train, y_train = make_motion(256, seed=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(2)
        model.train()
        for _ in range(60):
            index = torch.randint(0, x_train.shape[0], (32,), generator=g)
            loss = model(x_train[index], labels=y_train[index]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        for p in model.parameters():
            p.grad = None
        x_test, y_test = make_motion(32, seed=3)
        return model, x_test, y_test

    return make


@pytest.fixture(scope="session")
def motion_dataset():
    """Factory: ``motion_dataset(num_clips, seed, noise=0.1)`` -> a 2-class ``Dataset``: a square moving left/right."""

    def make(num_clips: int, seed: int, noise: float = 0.1):
        """A white 4x4 square crosses a noisy grey frame left-to-right (label 0) or right-to-left (label 1).

        Clean training solves it from the tubelet embedding alone and is fooled by an 8/255 PGD; adversarial training
        has to rely on the square itself.
        """
        import torch
        from datasets import Dataset

        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_clips) % 2
        pixels = (0.5 + noise * torch.randn(num_clips, 4, 3, 16, 16, generator=generator)).clamp(0, 1)
        for i in range(num_clips):
            row = int(torch.randint(0, 12, (1,), generator=generator))
            start = int(torch.randint(0, 4, (1,), generator=generator))
            for t in range(4):
                col = start + 3 * t if labels[i] == 0 else 12 - start - 3 * t
                pixels[i, t, :, row : row + 4, col : col + 4] = 1.0
        return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}).with_format("torch")

    return make


@pytest.fixture(scope="session")
def card_report():
    """Factory: ``card_report(**overrides)`` -> a hand-written ``RobustnessReport`` (clean 0.9, PGD 0.5, 8 clips)."""

    def make(**overrides):
        from hf_videomoe.evaluation import RobustnessReport

        kwargs = dict(
            clean_accuracy=0.9,
            robust_accuracy={"pgd": 0.5},
            worst_case_accuracy=0.5,
            num_samples=8,
            eps=4 / 255,
            attacks=["pgd"],
        )
        return RobustnessReport(**{**kwargs, **overrides})

    return make


@pytest.fixture
def loopback_hub(monkeypatch):
    """A running ``LoopbackHubServer`` for Hub calls made in this process: huggingface_hub's offline switch is lifted
    for this test only and loopback is exempt from proxies. (A subprocess takes ``server.client_env(...)`` instead.)"""
    import huggingface_hub.constants

    from hf_videomoe.testing import LoopbackHubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with LoopbackHubServer() as server:
        yield server


@pytest.fixture
def push_to_loopback_hub(tmp_path):
    """Factory: ``push_to_loopback_hub(model_dir, repo_id)`` runs ``hf-videomoe push`` to a loopback Hub -> files."""

    def push(model_dir, repo_id: str) -> dict:
        from hf_videomoe.testing import LoopbackHubServer

        with LoopbackHubServer() as server:
            proc = subprocess.run(
                [sys.executable, "-m", "hf_videomoe.cli", "push", "--model", str(model_dir), "--repo-id", repo_id],
                env=server.client_env(tmp_path / "hf"),
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
            return server.files(repo_id)

    return push


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
