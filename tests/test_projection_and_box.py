"""The threat model inside the attack loop: per-clip L2 projection, batch independence in L2, and the box.

``Attack.perturb`` clamps its output into the box at the very end, so a test that only looks at the output cannot see
a projection that lets iterates leave the box (the model then evaluates, and the attack selects, inputs no user can
feed it). Here a hook on the model records every input it is evaluated on, for every attack.
"""

import pytest
import torch

from hf_videomoe.attacks import ATTACKS, build_attack
from hf_videomoe.attacks.threat_model import project

L2_ATTACKS = [name for name in ATTACKS if name != "square"]  # Square is L∞ only


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model().eval()


def fast(name: str) -> dict:
    return {"steps": 30 if name == "square" else 3, "seed": 0}


def test_l2_projection_scales_each_clip_by_its_own_norm():
    """Hand-built deltas of norms 2ε, ε/2 and 1.5ε (ε = 1): the first and third come back at norm ε along the same
    direction, the second unchanged (a batch-wide norm would shrink all three by the same factor)."""
    base = torch.zeros(3, 2, 3, 4, 4)
    base[0, 0, 0, 0, :] = 1.0  # norm 2 (4 entries of 1)
    base[1, 1, 2, 3, 0] = 0.5  # norm 0.5
    base[2, 0, 1, :, 2] = 0.75  # norm 1.5
    out = project(base, torch.zeros_like(base), 1.0, "l2", bounds=None)
    norms = out.reshape(3, -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.5, 1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0], base[0] / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)
    torch.testing.assert_close(out[2], base[2] / 1.5, rtol=0, atol=1e-7)


def test_linf_projection_then_box_hand_values():
    x = torch.tensor([0.0, 0.5, 1.0, 0.98]).reshape(1, 1, 1, 1, 4)
    delta = torch.tensor([-0.2, 0.3, 0.1, 0.05]).reshape_as(x)
    out = project(delta, x, 0.1, "linf")
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.1, 0.0, 0.02]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", L2_ATTACKS)
def test_l2_attack_on_a_batch_equals_its_clips_one_by_one(name, model):
    """In L2 every clip has its own budget: the batch result equals the clips attacked alone. The clips differ in
    contrast, so their gradients (and unprojected steps) differ in norm."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 4, 3, 16, 16, generator=g) * torch.tensor([0.2, 0.5, 0.8, 1.0]).reshape(4, 1, 1, 1, 1)
    with torch.no_grad():
        y = model(x).logits.argmax(-1)  # right when clean, so no clip stops at its start
    attack = build_attack(name, norm="l2", eps=1.0, **fast(name))
    whole = attack.perturb(model, x, y)
    alone = torch.cat([attack.perturb(model, x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])])
    norms = (whole - x).reshape(4, -1).norm(dim=1)
    assert norms.max() <= 1.0 + 1e-5 and norms.max() > 0.5
    mismatch = ((whole - alone).abs() > 1e-5).float().mean().item()
    assert mismatch < 1e-3, f"{mismatch:.2%} of the elements depend on the batch"


class InputRecorder:
    """Forward pre-hook recording, for every forward of the model, how far its input leaves the box and the ball."""

    def __init__(self, model, x, eps, norm, shifts=(0,)):
        # TT evaluates temporally rolled copies of its iterate: those lie in the ball around the rolled clip.
        self.references = [torch.roll(x, shifts=s, dims=1) for s in shifts]
        self.x, self.eps, self.norm = x, eps, norm
        self.calls = 0
        self.box_excess = 0.0
        self.ball_excess = 0.0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        pixels = pixels.detach()
        self.calls += 1
        self.box_excess = max(self.box_excess, float((-pixels).max()), float((pixels - 1).max()))
        if pixels.shape == self.x.shape:  # the attack's batch (subsets of it are checked for the box only)
            sizes = []
            for reference in self.references:
                delta = (pixels - reference).reshape(pixels.shape[0], -1)
                sizes.append(delta.abs().amax(dim=1) if self.norm == "linf" else delta.norm(dim=1))
            size = torch.stack(sizes).amin(dim=0)
            self.ball_excess = max(self.ball_excess, float((size - self.eps).max()))


@pytest.mark.parametrize("name, norm", [(n, "linf") for n in ATTACKS] + [(n, "l2") for n in L2_ATTACKS])
def test_every_iterate_the_model_sees_is_inside_the_box_and_the_ball(name, norm, model):
    """Clips with every pixel on a face of the box and a large budget: any step not projected into the box inside
    the loop reaches the model out of [0, 1] (the final clamp would hide it in the output)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 2, (3, 4, 3, 16, 16), generator=g).float()
    x[0, :, :, :8] = 0.5  # one clip half inside, so steps inside the box happen too
    with torch.no_grad():
        y = model(x).logits.argmax(-1)
    eps = 0.3 if norm == "linf" else 8.0
    recorder = InputRecorder(model, x, eps, norm, shifts=range(-3, 4) if name == "tt" else (0,))
    try:
        adv = build_attack(name, eps=eps, norm=norm, **fast(name)).perturb(model, x, y)
    finally:
        recorder.handle.remove()
    assert recorder.calls >= 2
    assert recorder.box_excess <= 1e-6, f"{name} evaluated an input {recorder.box_excess:.3g} outside [0, 1]"
    assert recorder.ball_excess <= 1e-5, f"{name} evaluated an input {recorder.ball_excess:.3g} outside the ε-ball"
    assert not torch.equal(adv, x)
