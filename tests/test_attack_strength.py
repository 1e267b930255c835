"""Attack strength where it can fail: at a budget chosen per model so that PGD leaves 30-70 % accuracy.

At the paper's 8/255 every attack fools every clip of a small model, and "the joint attack is at least as strong as
its parts" then holds for any attack, broken or not. Here each model gets the budget (from a grid) at which PGD leaves
about half of the clips standing, and every claim is checked per clip:

* each joint attack fools every clip each of its parts (TLA-M, and TLA-R / TLGA-R) fools, up to the measured
  exceptions of JOINT_EXCEPTIONS (and explains them);
* every attack raises its own objective over its own start (the same attack with ``steps=0``);
* ``j-tla`` and untargeted ``apgd-dlr`` are strong, not merely "the output changed".

Two tiny VideoMAE-MoE models (token-level and model-level routing) are trained for 60 steps on a 4-class motion task in
about a second each; all attacks run 10 steps on 32 test clips.
"""

import pytest
import torch

from hf_videomoe.attacks import ATTACKS, build_attack, routing_change
from hf_videomoe.attacks.objectives import ce_loss, dlr_loss, dlr_targeted_loss, margin_loss, model_outputs

EPS_GRID = [x / 255 for x in (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)]
STEPS = 10
SEED = 0

# Measured exceptions to "the joint attack fools every clip its part fools" at the calibrated budget, as
# {(routing granularity, joint, part): clips of 32 the part fools and the joint attack does not}. Measured on this
# benchmark (token routing at 1.75/255: TLA-M fools 12 clips, J-TLA 10 and J-TLGA 11, each missing 4 of TLA-M's and
# fooling others TLA-M misses; model-level routing at 1/255: both joint attacks miss 1 of their router part's 3 clips).
# Why: see test_joint_attacks_fool_what_their_parts_fool. Every pair not listed has no exception.
JOINT_EXCEPTIONS = {
    ("token", "j-tla", "tla-m"): 4,
    ("token", "j-tlga", "tla-m"): 4,
    ("model", "j-tla", "tla-r"): 1,
    ("model", "j-tlga", "tlga-r"): 1,
}


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits.argmax(-1) == y


@pytest.fixture(scope="module", params=["token", "model"])
def setup(request, motion_trained_moe):
    """(granularity, model, x, y, eps, pgd accuracy): a trained tiny MoE and the grid budget whose PGD accuracy is
    closest to 50 %."""
    granularity = request.param
    model, x, y = motion_trained_moe(router_granularity=granularity)
    assert bool(correct(model, x, y).all()), "the strength tests need a model right on every clean clip"
    accuracy = {}
    for eps in EPS_GRID:
        adv = build_attack("pgd", eps=eps, steps=STEPS, seed=SEED).perturb(model, x, y)
        accuracy[eps] = correct(model, adv, y).float().mean().item()
        if accuracy[eps] < 0.3:
            break
    eps = min(accuracy, key=lambda e: abs(accuracy[e] - 0.5))
    return granularity, model, x, y, eps, accuracy[eps]


@pytest.fixture(scope="module")
def fooled(setup):
    """Per attack, which clips it fools at the calibrated budget (every clip is right when clean)."""
    _, model, x, y, eps, _ = setup
    cache = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            adv = build_attack(name, eps=eps, steps=STEPS, seed=SEED, **kwargs).perturb(model, x, y)
            cache[key] = (~correct(model, adv, y), adv)
        return cache[key]

    return get


def test_budget_is_away_from_saturation(setup):
    granularity, model, x, y, eps, pgd_accuracy = setup
    assert 0.3 <= pgd_accuracy <= 0.7, (granularity, eps * 255, pgd_accuracy)


@pytest.mark.parametrize("joint, router_part", [("j-tla", "tla-r"), ("j-tlga", "tlga-r")])
def test_joint_attacks_fool_what_their_parts_fool(setup, fooled, joint, router_part):
    """Per clip, the joint attack fools every clip each of its parts (TLA-M and the router attack) fools, except for
    the measured exceptions of JOINT_EXCEPTIONS.

    Why there are exceptions: the joint objective is CE + λ·L_Lip(F) + γ2·ℓ_Router with γ2 = 1, one perturbation, and
    the L∞ step follows the *sign* of the summed gradient. Where flipping routing does not flip the class (token
    routing: TLA-R alone fools 5 of 32 clips at this budget), the router term turns some pixel signs away from the
    CE's, the joint step climbs the CE more slowly than TLA-M's, and a clip TLA-M just reaches can stay correct (while
    the joint attack reaches others through routing). With model-level routing the single clip decision is easy to
    flip, the joint attack flips it on almost every clip, and the CE then dominates; the one clip it misses is one
    where flipping routing fools the model but the joint attack's step went along the CE. With γ2 = 0 the joint
    attack *is* TLA-M, clip for clip (checked below), so the router term is the only source of the difference. The
    paper's claim that the joint attacks dominate is therefore not a per-clip property of this implementation; the
    evaluator's worst case over all attacks is what reports robustness.
    """
    granularity = setup[0]
    joint_fooled, _ = fooled(joint)
    for part in ("tla-m", router_part):
        part_fooled, _ = fooled(part)
        assert part_fooled.any()  # every part does something at this budget
        missed = (part_fooled & ~joint_fooled).nonzero().flatten().tolist()
        allowed = JOINT_EXCEPTIONS.get((granularity, joint, part), 0)
        assert len(missed) <= allowed, f"{joint} misses {part}'s clips {missed} (measured: {allowed})"
        # Each exception is a trade, not a loss of strength: the joint attack fools at least half as many clips of its
        # own that the part does not.
        gained = (joint_fooled & ~part_fooled).sum().item()
        assert gained >= len(missed) / 2, (part, missed, gained)
    _, adv_without_router = fooled(joint, router_weight=0.0)
    _, adv_tla_m = fooled("tla-m")
    torch.testing.assert_close(adv_without_router, adv_tla_m, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ own objective


def _objective(attack, model, x, y, adv):
    """Per clip, the value ``attack`` maximises at ``adv`` (and whether that component is fooled there)."""
    name = attack.name
    if hasattr(attack, "build_objective"):
        objective = attack.build_objective()
        ctx = objective.prepare(model, x, y)
        with torch.no_grad():
            out = objective(model, adv, ctx)
        fooled = None if out.logits is None or not objective.requires_labels else out.logits.argmax(-1) != y
        return out.value, fooled
    with torch.no_grad():
        logits = model_outputs(model, adv)[0]
    fooled = logits.argmax(-1) != y
    if name == "apgd-ce":
        return ce_loss(logits, y), fooled
    if name == "apgd-dlr":
        return dlr_loss(logits, y), fooled
    if name == "apgd-t":  # one target class: the most likely wrong class on the clean clip
        with torch.no_grad():
            target = model_outputs(model, x)[0].scatter(1, y[:, None], float("-inf")).argmax(-1)
        return dlr_targeted_loss(logits, y, target), fooled
    if name == "square":
        return -margin_loss(logits, y), fooled
    raise AssertionError(f"no objective known for {name}")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_raises_its_own_objective_over_its_start(setup, name):
    """The attack's output scores at least its start on the attack's own objective, clip by clip (clips selected
    because they were fooled first may score lower), and clearly more on average. The start is what the same attack
    returns with ``steps=0``: the random start (or the clean clip, or Square's stripes)."""
    _, model, x, y, eps, _ = setup
    kwargs = dict(eps=eps, seed=SEED)
    if name == "apgd-t":
        kwargs["num_target_classes"] = 1
    attack = build_attack(name, steps=100 if name == "square" else STEPS, **kwargs)
    # FGSM always takes its one step (steps=0 is ignored); it starts from the clean clip.
    start = x if name == "fgsm" else build_attack(name, steps=0, **kwargs).perturb(model, x, y)
    adv = attack.perturb(model, x, y)
    before, _ = _objective(attack, model, x, y, start)
    after, fooled = _objective(attack, model, x, y, adv)
    assert float(after.mean()) > float(before.mean()) + 1e-3 * float(before.abs().mean()), (before, after)
    lower = after < before - 1e-5
    if getattr(attack, "selection", "misclassification") == "last":  # FGSM: the stepped point, no selection
        assert lower.float().mean() <= 0.25, (before, after)
    else:
        allowed = fooled if fooled is not None else torch.zeros_like(lower)
        assert not (lower & ~allowed).any(), (before[lower], after[lower])


# ------------------------------------------------------------------------------------------- j-tla and apgd-dlr


def test_j_tla_is_strong(setup, fooled):
    """J-TLA fools a third of the clips or more (PGD: about half), every clip TLA-R fools but the measured exception,
    and more clips than TLA-R; it moves routing more than TLA-M (its router term at work) on token routing (with one
    clip-level decision both flip it on nearly every clip)."""
    granularity, model, x, y, eps, pgd_accuracy = setup
    jtla, adv = fooled("j-tla")
    _, adv_m = fooled("tla-m")
    tla_r, _ = fooled("tla-r")
    assert jtla.float().mean() >= 0.3
    assert int(jtla.sum()) > int(tla_r.sum())
    assert int((tla_r & ~jtla).sum()) <= JOINT_EXCEPTIONS.get((granularity, "j-tla", "tla-r"), 0)
    if granularity == "token":
        assert routing_change(model, x, adv)["overall"] > routing_change(model, x, adv_m)["overall"]


def test_untargeted_apgd_dlr_is_strong(setup, fooled):
    """APGD-DLR fools about as many clips as PGD-CE (within 2 of 32) and at least a quarter; its DLR loss is positive
    exactly on the clips it fools (the loss's defining property), and it fools a clip only where the margin is gone."""
    _, model, x, y, eps, pgd_accuracy = setup
    dlr_fooled, adv = fooled("apgd-dlr")
    pgd_fooled, _ = fooled("pgd")
    assert dlr_fooled.float().mean() >= 0.25
    assert int(dlr_fooled.sum()) >= int(pgd_fooled.sum()) - 2
    with torch.no_grad():
        logits = model(adv).logits
    assert torch.equal(dlr_loss(logits, y) > 0, dlr_fooled)
