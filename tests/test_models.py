"""VideoMAE-MoE and TimeSformer-MoE: Auto classes, save/load, upcycling, routing granularity, input and
checkpoint validation. Tiny configs only (see conftest.py)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_videomoe import (
    TimesformerMoeConfig,
    TimesformerMoeForVideoClassification,
    VideoMAEMoeConfig,
    VideoMAEMoeForVideoClassification,
)
from hf_videomoe.moe import moe_blocks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Routing units per clip for the tiny configs: VideoMAE has 2 tubelet steps x 4 patches, TimeSformer 1 CLS + 4 x 4.
UNITS = {
    "videomae": {"token": 8, "frame": 2, "clip": 1},
    "timesformer": {"token": 17, "frame": 5, "clip": 1},
}
EXPECTED_SHAPE = "(batch, 4, 3, 16, 16)"


def clip(batch=2, seed=1, frames=4, size=16):
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalize(pixels, config):
    mean = torch.tensor(config.image_mean).view(1, 1, -1, 1, 1)
    std = torch.tensor(config.image_std).view(1, 1, -1, 1, 1)
    return (pixels - mean) / std


# ---------------------------------------------------------------------------------------------------- Auto classes


def test_auto_classes_load_in_fresh_interpreter(tmp_path, tiny_videomae_config, tiny_timesformer_config):
    x = clip()
    expected = {}
    for name, model in (
        ("videomae", VideoMAEMoeForVideoClassification(tiny_videomae_config(router_granularity="frame")).eval()),
        ("timesformer", TimesformerMoeForVideoClassification(tiny_timesformer_config(num_experts_per_tok=2)).eval()),
    ):
        model.save_pretrained(tmp_path / name)
        with torch.no_grad():
            out = model(x)
            backbone = getattr(model, model.base_model_prefix)(x)
        expected[name] = {"logits": out.logits, "hidden": backbone.last_hidden_state}
    torch.save({"x": x, "expected": expected}, tmp_path / "expected.pt")

    script = textwrap.dedent(
        f"""
        import sys, torch
        import hf_videomoe
        from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification
        root = {str(tmp_path)!r}
        data = torch.load(root + "/expected.pt")
        names = {{"videomae": "VideoMAEMoe", "timesformer": "TimesformerMoe"}}
        for name, prefix in names.items():
            path = root + "/" + name
            config = AutoConfig.from_pretrained(path)
            assert type(config).__name__ == prefix + "Config", type(config)
            clf = AutoModelForVideoClassification.from_pretrained(path).eval()
            assert type(clf).__name__ == prefix + "ForVideoClassification", type(clf)
            base = AutoModel.from_pretrained(path).eval()
            assert type(base).__name__ == prefix + "Model", type(base)
            with torch.no_grad():
                logits = clf(data["x"]).logits
                hidden = base(data["x"]).last_hidden_state
            torch.testing.assert_close(logits, data["expected"][name]["logits"], rtol=0, atol=1e-6)
            torch.testing.assert_close(hidden, data["expected"][name]["hidden"], rtol=0, atol=1e-6)
        print("AUTO-OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=240
    )
    assert result.returncode == 0 and "AUTO-OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, make_moe_model, moe_class):
    model = make_moe_model(
        num_experts=3,
        num_experts_per_tok=2,
        moe_layers=[1],
        router_granularity="frame",
        router_aux_loss_coef=0.05,
        router_jitter_noise=0.1,
    )
    model.save_pretrained(tmp_path)
    loaded = moe_class.from_pretrained(tmp_path).eval()
    for field in (
        "num_experts",
        "num_experts_per_tok",
        "moe_layers",
        "router_granularity",
        "router_aux_loss_coef",
        "router_jitter_noise",
        "image_mean",
        "image_std",
    ):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    x = clip()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
    torch.testing.assert_close(b.aux_loss, a.aux_loss, rtol=0, atol=0)
    assert len(b.router_logits) == len(a.router_logits) == 1
    torch.testing.assert_close(b.router_logits[0], a.router_logits[0], rtol=0, atol=0)
    # The experts kernel can be chosen at load time like any transformers MoE.
    eager = moe_class.from_pretrained(tmp_path, experts_implementation="eager").eval()
    assert eager.config._experts_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(x).logits, a.logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- upcycling


UPCYCLE_CASES = [
    ("videomae", {}, {}),
    ("videomae", {}, {"moe_layers": [1], "num_experts_per_tok": 2, "router_granularity": "frame"}),
    ("timesformer", {"attention_type": "divided_space_time"}, {}),
    ("timesformer", {"attention_type": "joint_space_time"}, {"num_experts_per_tok": 2}),
    ("timesformer", {"attention_type": "divided_space_time"}, {"moe_layers": [0], "router_granularity": "clip"}),
]


@pytest.mark.parametrize("source", ["instance", "path"])
@pytest.mark.parametrize("model_family,dense_kwargs,moe_kwargs", UPCYCLE_CASES)
def test_upcycling_matches_dense(dense_kwargs, moe_kwargs, source, tmp_path, make_config, moe_class, dense_class):
    torch.manual_seed(0)
    dense = dense_class(make_config(dense=True, **dense_kwargs)).eval()
    with torch.no_grad():  # non-zero biases and non-trivial weights everywhere, so every copy is checked
        for param in dense.parameters():
            param.add_(0.05 * torch.randn_like(param))
    if source == "path":
        dense.save_pretrained(tmp_path)
    moe = moe_class.from_dense(tmp_path if source == "path" else dense, num_experts=4, **moe_kwargs)

    assert isinstance(moe, moe_class) and not moe.training
    moe_layers = moe_kwargs.get("moe_layers", [0, 1])
    assert moe.config.moe_layers == moe_layers
    assert len(moe_blocks(moe)) == len(moe_layers)
    layers = getattr(moe, moe.base_model_prefix).encoder.layer
    for i, layer in enumerate(layers):
        assert layer.is_moe == (i in moe_layers)
    if "attention_type" in dense_kwargs:
        assert moe.config.attention_type == dense_kwargs["attention_type"]

    x = clip()
    with torch.no_grad():
        expected = dense(normalize(x, moe.config)).logits
        out = moe(x)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    assert len(out.router_logits) == len(moe_layers)


# ----------------------------------------------------------------------------------------- granularity and top-k


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("granularity", ["token", "frame", "clip"])
def test_granularity_and_top_k(model_family, granularity, top_k, make_moe_model):
    model = make_moe_model(router_granularity=granularity, num_experts_per_tok=top_k)
    x, labels = clip(batch=3), torch.tensor([0, 3, 7])
    with torch.no_grad():
        out = model(x, labels=labels)
    assert out.logits.shape == (3, 8)
    assert len(out.router_logits) == 2
    for logits in out.router_logits:
        assert logits.shape == (3, UNITS[model_family][granularity], 4)
        assert logits.dtype == torch.float32
    assert out.aux_loss.ndim == 0 and out.aux_loss > 0
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, ce + out.aux_loss)


def test_output_router_logits_false(make_moe_model):
    x, labels = clip(), torch.tensor([1, 2])
    model = make_moe_model(output_router_logits=False)
    with torch.no_grad():
        out = model(x, labels=labels)
        assert out.router_logits is None and out.aux_loss is None
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        # The forward argument overrides the config, both ways.
        on = model(x, labels=labels, output_router_logits=True)
    assert len(on.router_logits) == 2 and on.aux_loss is not None
    torch.testing.assert_close(on.logits, out.logits, rtol=0, atol=0)
    model.config.output_router_logits = True
    with torch.no_grad():
        off = model(x, output_router_logits=False)
    assert off.router_logits is None and off.aux_loss is None


@pytest.mark.parametrize("granularity", ["token", "frame", "clip"])
def test_eval_outputs_do_not_depend_on_the_batch(granularity, make_moe_model):
    model = make_moe_model(router_granularity=granularity, num_experts_per_tok=2)
    x = clip(batch=4)
    with torch.no_grad():
        full = model(x)
        for i in range(4):
            single = model(x[i : i + 1])
            torch.testing.assert_close(single.logits, full.logits[i : i + 1], rtol=0, atol=1e-5)
            for a, b in zip(single.router_logits, full.router_logits):
                torch.testing.assert_close(a, b[i : i + 1], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------- bad configs


BAD_CONFIGS = [
    ({"num_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
    ({"num_experts": 0}, "num_experts"),
    ({"router_granularity": "patch"}, "router_granularity"),
    ({"moe_layers": [2]}, "out of range"),
    ({"moe_layers": [-1]}, "out of range"),
    ({"moe_layers": [0, 0]}, "duplicate"),
    ({"router_aux_loss_coef": -0.1}, "router_aux_loss_coef"),
    ({"router_z_loss_coef": -1.0}, "router_z_loss_coef"),
    ({"router_jitter_noise": -0.1}, "router_jitter_noise"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_std": [0.2]}, "image_std"),
]


@pytest.mark.parametrize("kwargs,match", BAD_CONFIGS)
@pytest.mark.parametrize("config_cls", [VideoMAEMoeConfig, TimesformerMoeConfig])
def test_invalid_config_raises_at_build(config_cls, kwargs, match):
    shape = dict(
        image_size=16,
        patch_size=8,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    with pytest.raises(ValueError, match=match):
        config_cls(**shape, **kwargs)


def test_timesformer_moe_from_config_sees_frame_order(tiny_timesformer_config):
    """transformers zero-initialises TimeSformer's time embeddings, which makes a model built from a config exactly
    invariant to frame order; ours starts with random ones, so a clip and its time reversal give different logits."""
    torch.manual_seed(0)
    model = TimesformerMoeForVideoClassification(tiny_timesformer_config(num_labels=3)).eval()
    assert torch.count_nonzero(model.timesformer.embeddings.time_embeddings) > 0
    clip = torch.rand(2, 4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values=clip).logits, model(pixel_values=clip.flip(1)).logits, atol=1e-4)


def test_timesformer_space_only_rejected(tiny_timesformer_config):
    with pytest.raises(ValueError, match="space_only"):
        tiny_timesformer_config(attention_type="space_only")


# -------------------------------------------------------------------------------------------- bad pixel values


BAD_PIXELS = {
    "rank4": lambda: torch.rand(4, 3, 16, 16),
    "rank6": lambda: torch.rand(1, 2, 4, 3, 16, 16),
    "too_few_frames": lambda: torch.rand(2, 3, 3, 16, 16),
    "too_many_frames": lambda: torch.rand(2, 8, 3, 16, 16),
    "channels": lambda: torch.rand(2, 4, 1, 16, 16),
    "channels_last": lambda: torch.rand(2, 4, 16, 16, 3),
    "size_small": lambda: torch.rand(2, 4, 3, 8, 8),
    "size_large": lambda: torch.rand(2, 4, 3, 32, 32),
    "non_square": lambda: torch.rand(2, 4, 3, 16, 8),
    "uint8": lambda: (torch.rand(2, 4, 3, 16, 16) * 255).to(torch.uint8),
    "int64": lambda: torch.zeros(2, 4, 3, 16, 16, dtype=torch.long),
    "range_0_255": lambda: torch.rand(2, 4, 3, 16, 16) * 255,
    "normalised": lambda: torch.randn(2, 4, 3, 16, 16),
    "negative": lambda: torch.rand(2, 4, 3, 16, 16) - 0.5,
}


@pytest.mark.parametrize("case", sorted(BAD_PIXELS))
def test_bad_pixel_values_raise(case, make_moe_model):
    model = make_moe_model()
    with pytest.raises(ValueError, match=re.escape(EXPECTED_SHAPE)) as info:
        model(BAD_PIXELS[case]())
    assert EXPECTED_SHAPE in str(info.value), str(info.value)


def test_pixel_values_must_be_a_tensor(make_moe_model):
    with pytest.raises(TypeError, match=r"torch.Tensor"):
        make_moe_model()(clip().numpy())


def test_pixel_range_tolerates_resampling_overshoot(make_moe_model):
    x = clip().clamp(0, 1)
    x[0, 0, 0, 0, 0], x[1, 0, 0, 0, 0] = -5e-4, 1 + 5e-4
    with torch.no_grad():
        assert make_moe_model()(x).logits.shape == (2, 8)


# ----------------------------------------------------------------------------------------- checkpoint errors


@pytest.fixture
def saved_checkpoint(make_moe_model, tmp_path):
    path = tmp_path / "ckpt"
    make_moe_model().save_pretrained(path)
    return path


def _loaders(moe_class):
    from transformers import AutoModelForVideoClassification

    return {
        "auto": AutoModelForVideoClassification.from_pretrained,
        "direct": moe_class.from_pretrained,
    }


@pytest.mark.parametrize("loader", ["auto", "direct"])
def test_missing_checkpoint_directory(moe_class, tmp_path, loader):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(OSError, match=re.escape(str(missing))) as info:
        _loaders(moe_class)[loader](missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("loader", ["auto", "direct"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights_give_clear_error(moe_class, saved_checkpoint, loader, damage):
    weights = saved_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 64, "empty": b""}[damage]
    )
    with pytest.raises(OSError, match="looks corrupt") as info:
        _loaders(moe_class)[loader](saved_checkpoint)
    assert str(saved_checkpoint) in str(info.value)


@pytest.mark.parametrize("loader", ["auto", "direct"])
def test_corrupt_config_gives_clear_error(moe_class, saved_checkpoint, loader):
    (saved_checkpoint / "config.json").write_text("{ this is not json")
    with pytest.raises(OSError, match="config.json"):
        _loaders(moe_class)[loader](saved_checkpoint)


def test_missing_config_gives_clear_error(saved_checkpoint, moe_class):
    (saved_checkpoint / "config.json").unlink()
    with pytest.raises(OSError, match="no config.json"):
        moe_class.from_pretrained(saved_checkpoint)
    with pytest.raises((OSError, ValueError), match="config.json"):
        _loaders(moe_class)["auto"](saved_checkpoint)


def test_missing_weights_gives_clear_error(saved_checkpoint, moe_class):
    (saved_checkpoint / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        moe_class.from_pretrained(saved_checkpoint)


# ----------------------------------------------------------------------------------------------- from_dense errors


def test_from_dense_errors(
    model_family, tmp_path, tiny_videomae_config, tiny_timesformer_config, moe_class, make_moe_model
):
    from transformers import AutoModelForVideoClassification

    other = "timesformer" if model_family == "videomae" else "videomae"
    other_config = tiny_timesformer_config if other == "timesformer" else tiny_videomae_config
    wrong = AutoModelForVideoClassification.from_config(other_config(dense=True))
    with pytest.raises(ValueError, match=other):
        moe_class.from_dense(wrong)
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match=other):
        moe_class.from_dense(tmp_path / "wrong")
    with pytest.raises(OSError, match="no such file"):
        moe_class.from_dense(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        moe_class.from_dense(tmp_path / "empty")
    moe = make_moe_model()
    with pytest.raises(ValueError, match="already has MoE"):
        moe_class.from_dense(moe)
    moe.save_pretrained(tmp_path / "moe")
    with pytest.raises(ValueError, match=f"{model_family}_moe"):
        moe_class.from_dense(tmp_path / "moe")
    with pytest.raises(TypeError, match="from_dense expects a .* or a path to one, got int"):
        moe_class.from_dense(42)


def test_config_json_is_plain(model_family, saved_checkpoint):
    """The saved config names our model type and carries the MoE fields (what the Auto classes dispatch on)."""
    config = json.loads((saved_checkpoint / "config.json").read_text())
    assert config["model_type"] == f"{model_family}_moe"
    assert config["num_experts"] == 4 and config["moe_layers"] == [0, 1]
