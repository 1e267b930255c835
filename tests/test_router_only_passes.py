"""Router-only passes stop after the last router: same router logits, same attacks, same J-TLAT steps, less work."""

import pytest
import torch

from hf_videomoe.attacks import build_attack
from hf_videomoe.attacks.objectives import Objective
from hf_videomoe.moe import router_logits_only

GRANULARITIES = ("token", "frame", "clip", "model")


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_router_logits_only_equals_the_full_pass_and_skips_the_classifier(granularity, make_moe_model):
    model = make_moe_model(router_granularity=granularity, num_labels=4)
    x = torch.rand(3, 4, 3, 16, 16)
    full = model(x, output_router_logits=True).router_logits
    calls = []
    handle = model.classifier.register_forward_hook(lambda *args: calls.append(1))
    try:
        partial = router_logits_only(model, lambda: model(x, output_router_logits=True))
    finally:
        handle.remove()
    assert calls == []  # the classifier never ran
    assert len(partial) == len(full)
    for a, b in zip(partial, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a Mixture-of-Experts model"):
        router_logits_only(torch.nn.Linear(2, 2), lambda: None)


@pytest.mark.parametrize("name", ["pgd-r", "tla-r", "tlga-r"])
@pytest.mark.parametrize("granularity", ["token", "model"])
@pytest.mark.parametrize("model_family", ["videomae"])
def test_router_attacks_are_bit_identical_with_the_full_pass(name, granularity, make_moe_model, monkeypatch):
    model = make_moe_model(router_granularity=granularity, num_labels=4)
    batch = {"pixel_values": torch.rand(4, 4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 3])}
    attack = build_attack(name, eps=8 / 255, steps=3, seed=0)
    assert attack.build_objective().routers_only
    fast = attack(model, batch)["pixel_values"]
    monkeypatch.setattr(Objective, "routers_only", property(lambda self: False))
    full = attack(model, batch)["pixel_values"]
    assert torch.equal(fast, full)
    assert not build_attack("j-tlga", eps=8 / 255, steps=1).build_objective().routers_only  # reads the logits
