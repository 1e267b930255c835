"""Our attacks against a maintained reference implementation: torchattacks' PGD (Madry et al.) on the same model.

torchattacks is a test-only dependency (scripts/setup_env.sh installs it without its own requirements). It is written
for images but never looks at the layout, so it runs on video clips as they are.
"""

import pytest
import torch
from torch import nn

torchattacks = pytest.importorskip("torchattacks", reason="test-only reference; scripts/setup_env.sh installs it")

from hf_videomoe.attacks import build_attack
from hf_videomoe.models.videomae_moe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification


class Logits(nn.Module):
    """torchattacks expects a module returning the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = VideoMAEMoeConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=8,
                               num_experts=4)
    model = VideoMAEMoeForVideoClassification(config).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 4, 3, 16, 16, generator=generator)
    y = torch.randint(0, 8, (6,), generator=generator)
    return model, x, y


@pytest.mark.parametrize("steps, eps, alpha", [(1, 8 / 255, 2 / 255), (5, 8 / 255, 2 / 255), (10, 4 / 255, 1 / 255)])
def test_pgd_without_random_start_matches_torchattacks(setup, steps, eps, alpha):
    """PGD from the clean clip, fixed step α, last iterate: ours and torchattacks' agree to 1e-5 (their loss is the
    batch mean of the CE, ours the sum; the sign of the gradient is the same)."""
    model, x, y = setup
    reference = torchattacks.PGD(Logits(model), eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    ours = build_attack("pgd", eps=eps, step_size=alpha, steps=steps, random_start=False, selection="last",
                        temporal_step="uniform").perturb(model, x, y)
    assert not torch.equal(ours, x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
