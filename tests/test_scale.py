"""Ready for real sizes: activation checkpointing and float32 routers under mixed precision (tiny configs)."""

import pytest
import torch

from hf_videomoe import TimesformerMoeForVideoClassification, VideoMAEMoeForVideoClassification
from hf_videomoe.attacks import build_attack
from hf_videomoe.moe import SparseMoeBlock

CLASSES = {"videomae": VideoMAEMoeForVideoClassification, "timesformer": TimesformerMoeForVideoClassification}


@pytest.fixture(params=["videomae", "timesformer"])
def kind(request):
    return request.param


def build(kind, tiny_videomae_config, tiny_timesformer_config, **overrides):
    make = tiny_videomae_config if kind == "videomae" else tiny_timesformer_config
    torch.manual_seed(0)
    return CLASSES[kind](make(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)).train()


def clip(batch=2):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def grads(model, pixel_values, labels):
    model.zero_grad(set_to_none=True)
    model(pixel_values, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("granularity", ["token", "model"])
def test_checkpointing_gives_the_same_gradients(kind, tiny_videomae_config, tiny_timesformer_config, granularity,
                                                monkeypatch):
    model = build(kind, tiny_videomae_config, tiny_timesformer_config, router_granularity=granularity,
                  router_jitter_noise=0.1)  # jitter: the recompute must replay the same random draw
    x, y = clip(), torch.tensor([1, 2])
    torch.manual_seed(5)
    reference = grads(model, x, y)
    calls = []
    forward = SparseMoeBlock.forward  # called from inside each checkpointed layer, so it runs again on recompute
    monkeypatch.setattr(SparseMoeBlock, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    torch.manual_seed(5)
    checkpointed = grads(model, x, y)
    assert set(checkpointed) == set(reference)
    assert any("router" in name for name in checkpointed)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # Every MoE layer ran once more during backward: checkpointing really happened.
    assert len(calls) == 2 * len(model.config.moe_layers)
    # The training attacks (input gradients, model left in train mode) work with checkpointing on.
    adv = build_attack("pgd", eps=4 / 255, steps=2, seed=0)(model, {"pixel_values": x, "labels": y})["pixel_values"]
    assert model.training and (adv - x).abs().max() <= 4 / 255 + 1e-6


def test_reentrant_checkpointing_is_refused(tiny_videomae_config, tiny_timesformer_config):
    model = build("videomae", tiny_videomae_config, tiny_timesformer_config)
    with pytest.raises(ValueError, match="non-reentrant"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


def test_trainer_gradient_checkpointing_argument(tmp_path, tiny_videomae_config, tiny_timesformer_config):
    from hf_videomoe.data import make_moving_shapes
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments

    model = build("videomae", tiny_videomae_config, tiny_timesformer_config)
    data = make_moving_shapes(16, num_frames=4, image_size=16, seed=0, test_size=4)
    args = AdversarialTrainingArguments(output_dir=str(tmp_path), adv_method="pgd-at", adv_eps=4 / 255, adv_steps=1,
                                        max_steps=2, per_device_train_batch_size=4, gradient_checkpointing=True,
                                        report_to=[], use_cpu=True, save_strategy="no")
    AdversarialTrainer(model=model, args=args, train_dataset=data["train"]).train()
    assert model.is_gradient_checkpointing
