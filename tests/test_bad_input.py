"""Bad input at the public boundaries: a table per entry point, each row asserting the error type and that the message
names the argument (never a NaN, a silent cast or an error from deep inside torch)."""

import math

import pytest
import torch

from hf_videomoe import TimesformerMoeConfig, VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
from hf_videomoe.attacks import build_attack

SHAPE = dict(image_size=16, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, num_labels=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**SHAPE)).eval()


def clips(batch=2):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def with_value(index, value):
    x = clips()
    x.view(-1)[index] = value
    return x


FORWARD_CASES = [
    # (id, pixel_values, labels, error, words the message must contain)
    ("nan-pixel", with_value(5, float("nan")), None, ValueError, ["pixel_values", "NaN"]),
    ("inf-pixel", with_value(7, float("inf")), None, ValueError, ["pixel_values", "infinite"]),
    ("empty-batch", torch.rand(0, 4, 3, 16, 16), None, ValueError, ["empty batch", "pixel_values"]),
    ("0-255-pixels", clips() * 255, None, ValueError, ["pixel_values", "[0, 1]"]),
    ("float-labels", clips(), torch.tensor([0.7, 1.2]), TypeError, ["labels", "integer"]),
    ("one-hot-labels", clips(), torch.eye(8)[:2], TypeError, ["labels", "one-hot"]),
    ("labels-out-of-range", clips(), torch.tensor([0, 8]), ValueError, ["labels", "[0, 8)", "[0, 8]"]),
    ("negative-labels", clips(), torch.tensor([-1, 2]), ValueError, ["labels", "[0, 8)"]),
    ("labels-wrong-count", clips(), torch.tensor([1, 2, 3]), ValueError, ["labels", "(2,)"]),
    ("labels-not-a-tensor", clips(), [1, 2], TypeError, ["labels", "torch.Tensor"]),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_model_forward_rejects(model, case):
    _, pixel_values, labels, error, words = case
    with pytest.raises(error) as info:
        model(pixel_values, labels=labels)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


CONFIG_CASES = [
    ("nan-image-std", dict(image_std=[float("nan"), 1.0, 1.0]), ["image_std", "finite"]),
    ("inf-image-mean", dict(image_mean=[0.0, math.inf, 0.0]), ["image_mean", "finite"]),
    ("nan-aux-coef", dict(router_aux_loss_coef=float("nan")), ["router_aux_loss_coef", "finite"]),
    ("negative-z-coef", dict(router_z_loss_coef=-1.0), ["router_z_loss_coef", ">= 0"]),
    ("zero-labels", dict(num_labels=0), ["num_labels", "positive"]),
    ("unknown-gate", dict(router_gate="softmax"), ["router_gate", "straight_through"]),
    ("unknown-granularity", dict(router_granularity="video"), ["router_granularity", "model"]),
]


@pytest.mark.parametrize("config_cls", [VideoMAEMoeConfig, TimesformerMoeConfig])
@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_rejects(config_cls, case):
    _, overrides, words = case
    with pytest.raises(ValueError) as info:
        config_cls(**{**SHAPE, **overrides})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd-ce", "square", "tlga-r", "j-tlga"])
def test_linf_budget_above_the_pixel_range_is_rejected(name):
    with pytest.raises(ValueError, match=r"`eps`=8\.0 .*L∞ budget larger than the whole pixel range"):
        build_attack(name, eps=8)
    build_attack(name, eps=1.0)  # the whole range is still a (degenerate) budget


def test_l2_budget_above_the_box_diameter_is_rejected(model):
    x = clips()  # 4 * 3 * 16 * 16 = 3072 values per clip: diameter sqrt(3072) ≈ 55.4
    with pytest.raises(ValueError, match=r"`eps`=100\.0 .*L2 budget larger than the diameter 55.4"):
        build_attack("pgd", norm="l2", eps=100, steps=1).perturb(model, x, torch.tensor([0, 1]))
    build_attack("pgd", norm="l2", eps=50, steps=1).perturb(model, x, torch.tensor([0, 1]))


def test_cli_attack_with_an_eps_in_pixel_units_exits_2(capsys):
    from hf_videomoe.cli import main

    with pytest.raises(SystemExit) as info:
        main(["attack", "--model", "missing-dir", "--eps", "8"])
    assert info.value.code == 2
    assert "eps" in capsys.readouterr().err
