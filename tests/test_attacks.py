"""Tests of hf_videomoe.attacks: threat model, side effects, determinism, batch independence, attack strength on a
trained toy model, MoE diagnostics, bad inputs and the `datasets` transform.

Everything runs on tiny models (VideoMAE-MoE: 16x16 frames, patch 8, 4 frames, hidden 32, 2 layers, 4 experts) so the
file stays well under a few minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from hf_videomoe import (  # noqa: E402
    TimesformerMoeForVideoClassification,
    VideoMAEMoeForVideoClassification,
)
from hf_videomoe.attacks import (  # noqa: E402
    ATTACKS,
    DENSE_ATTACKS,
    MOE_ATTACKS,
    Attack,
    NormalizedModel,
    build_attack,
    expert_usage,
    router_lipschitz,
    routing_change,
    temporal_step_sizes,
)
from hf_videomoe.attacks import objectives as O  # noqa: E402
from hf_videomoe.moe import force_experts, moe_blocks, selected_experts  # noqa: E402

CONTRACT_NAMES = [
    "fgsm",
    "pgd",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "square",
    "tt",
    "pgd-r",
    "tla-r",
    "tlga-r",
    "tla-e",
    "tla-m",
    "j-tla",
    "j-tlga",
]
ROUTER_ONLY = ["pgd-r", "tla-r", "tlga-r"]
EPS = 8 / 255


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------------------


def fast_kwargs(name: str, **overrides) -> dict:
    """Small budgets: 3 gradient steps, 30 Square queries."""
    kwargs = {"steps": 30 if name == "square" else 3}
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model().eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.rand(4, 4, 3, 16, 16, generator=g), "labels": torch.randint(0, 8, (4,), generator=g)}


@pytest.fixture(scope="module")
def trained(motion_trained_moe):
    """A tiny VideoMAE-MoE trained (undefended) on the toy motion task; returns (model, test clips, test labels)."""
    model, x_test, y_test = motion_trained_moe()
    assert accuracy(model, x_test, y_test) >= 0.9, "the strength tests need an accurate toy model"
    return model, x_test, y_test


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits.argmax(-1) == y


def accuracy(model, x, y) -> float:
    return correct(model, x, y).float().mean().item()


def assert_in_threat_model(adv, x, eps, norm, tol=1e-5):
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1, "adversarial clips left the [0, 1] box"
    delta = (adv - x).reshape(x.shape[0], -1)
    if norm == "linf":
        assert delta.abs().amax(dim=1).max() <= eps + tol
    else:
        assert delta.norm(dim=1).max() <= eps + tol


# ----------------------------------------------------------------------------------------------------------------------
# Registry and API
# ----------------------------------------------------------------------------------------------------------------------


def test_registry_has_contract_names():
    assert list(ATTACKS) == CONTRACT_NAMES
    assert set(DENSE_ATTACKS) == {"fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square", "tt", "tla-m"}
    assert set(MOE_ATTACKS) == set(CONTRACT_NAMES) - set(DENSE_ATTACKS)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_attributes_and_settings(name):
    attack = build_attack(name.upper().replace("-", "_"))  # case / underscore insensitive
    assert isinstance(attack, Attack) and attack.name == name
    assert attack.eps == pytest.approx(8 / 255) and attack.norm == "linf" and attack.seed == 0
    assert attack.requires_moe == (name in MOE_ATTACKS)
    settings = attack.settings()
    assert json.loads(json.dumps(settings)) == settings
    for key in ("name", "norm", "eps", "steps", "step_size", "seed"):
        assert key in settings
    if name not in ("fgsm", "apgd-ce", "apgd-dlr", "apgd-t", "square", "tt"):
        assert attack.step_size == pytest.approx(2.5 * attack.eps / attack.steps)
    if name in ("tla-r", "tlga-r", "tla-e", "tla-m", "j-tla", "j-tlga"):
        assert settings["temporal_step"] == "normalized" and settings["temporal_momentum"] == 0.9
        assert settings["lipschitz_denominator"] == "fixed"
    assert name in repr(attack)


def test_paper_weights_enter_the_objective():
    attack = build_attack(
        "j-tlga", lipschitz_weight=0.5, router_lipschitz_weight=0.25, guidance_weight=2.0, router_weight=3.0
    )
    objective = attack.build_objective()
    assert objective.lipschitz_weight == 0.5
    assert objective.router_ce_weight == 3.0
    assert objective.router_lipschitz_weight == pytest.approx(0.75)  # γ2 · λ_R
    assert objective.guidance_weight == pytest.approx(6.0)
    assert objective.loss == "ce" and build_attack("j-tlga", loss="dlr").build_objective().loss == "dlr"
    with pytest.raises(ValueError, match="loss"):
        build_attack("j-tla", loss="hinge")
    with pytest.raises(TypeError, match="guidance_weight"):
        build_attack("pgd", guidance_weight=1.0)
    assert build_attack("pgd", strict=False, guidance_weight=1.0, eps=0.01).eps == 0.01


# ----------------------------------------------------------------------------------------------------------------------
# Threat model, side effects, determinism, batch independence: every attack
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_threat_model(name, norm, model, batch):
    eps = EPS if norm == "linf" else 0.5
    if name == "square" and norm == "l2":
        with pytest.raises(ValueError, match="linf"):
            build_attack(name, norm=norm)
        return
    attack = build_attack(name, eps=eps, norm=norm, **fast_kwargs(name))
    adv = attack.perturb(model, batch["pixel_values"], batch["labels"])
    assert_in_threat_model(adv, batch["pixel_values"], eps, norm)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_box_is_respected_near_the_edges(name, model):
    x = torch.randint(0, 2, (2, 4, 3, 16, 16)).float()  # every pixel on a face of the box
    adv = build_attack(name, eps=0.3, **fast_kwargs(name)).perturb(model, x, torch.tensor([0, 1]))
    assert_in_threat_model(adv, x, 0.3, "linf")


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_inputs_untouched_and_new_batch(name, model, batch):
    pixels, labels = batch["pixel_values"].clone(), batch["labels"].clone()
    extra = object()
    given = {"pixel_values": batch["pixel_values"], "labels": batch["labels"], "video_id": extra}
    out = build_attack(name, **fast_kwargs(name))(model, given)
    assert out is not given and set(out) == set(given)
    assert out["video_id"] is extra and out["labels"] is given["labels"]
    assert given["pixel_values"] is batch["pixel_values"]
    assert torch.equal(batch["pixel_values"], pixels) and torch.equal(batch["labels"], labels)
    assert not torch.equal(out["pixel_values"], pixels)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_eps_zero_returns_input(name, model, batch):
    adv = build_attack(name, eps=0.0, **fast_kwargs(name)).perturb(model, batch["pixel_values"], batch["labels"])
    assert torch.equal(adv, batch["pixel_values"]) and adv is not batch["pixel_values"]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_deterministic_by_seed_and_global_rng_untouched(name, model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    rng_state = torch.get_rng_state()
    first = build_attack(name, seed=3, **fast_kwargs(name)).perturb(model, x, y)
    torch.manual_seed(1234)  # the global RNG must not matter
    second = build_attack(name, seed=3, **fast_kwargs(name)).perturb(model, x, y)
    assert torch.equal(first, second)
    torch.set_rng_state(rng_state)
    build_attack(name, seed=3, **fast_kwargs(name)).perturb(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng_state), "attacks must not consume the global RNG"
    if name not in ("fgsm", "tt"):  # FGSM and TT start from the clean clip: nothing random
        other = build_attack(name, seed=4, **fast_kwargs(name)).perturb(model, x, y)
        assert not torch.equal(first, other)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_model_state_restored(name, batch, tiny_moe_model):
    model = tiny_moe_model().eval()
    model.train()
    model.videomae.encoder.layer[0].attention.eval()  # a mixed train / eval state
    params = dict(model.named_parameters())
    frozen = "videomae.embeddings.patch_embeddings.projection.bias"
    params[frozen].requires_grad_(False)
    with_grad = "classifier.weight"
    params[with_grad].grad = torch.full_like(params[with_grad], 0.5)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in params.items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}

    with torch.no_grad():  # attacks enable gradients themselves
        adv = build_attack(name, **fast_kwargs(name)).perturb(model, batch["pixel_values"], batch["labels"])
    assert not torch.equal(adv, batch["pixel_values"])
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        if grads[n] is None:
            assert p.grad is None, f"{n} got a gradient"
        else:
            assert torch.equal(p.grad, grads[n])
    assert all(block.forced_expert is None for block in moe_blocks(model))


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_batch_equals_samples_one_by_one(name, model, batch):
    """Random starts are seeded per sample from (seed, content), so a clip's result does not depend on its batch."""
    attack = build_attack(name, **fast_kwargs(name))
    x, y = batch["pixel_values"], batch["labels"]
    whole = attack.perturb(model, x, y)
    alone = torch.cat([attack.perturb(model, x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])])
    reordered = attack.perturb(model, x.flip(0), y.flip(0)).flip(0)
    for other in (alone, reordered):
        mismatch = ((whole - other).abs() > 1e-5).float().mean().item()
        assert mismatch < 1e-3, f"{mismatch:.2%} of the elements depend on the batch"


def test_inference_mode_and_training_mode_callers(batch, tiny_moe_model):
    model = tiny_moe_model().train()
    with torch.inference_mode():
        x = batch["pixel_values"].clone()
        adv = build_attack("j-tlga", steps=2).perturb(model, x, batch["labels"])
    assert model.training and not torch.equal(adv, x)


# ----------------------------------------------------------------------------------------------------------------------
# Engine pieces
# ----------------------------------------------------------------------------------------------------------------------


def test_temporal_step_rules():
    v = torch.tensor([[0.0, 1.0, 100.0, 1e4]])
    alpha = 0.1
    uniform = temporal_step_sizes(v, alpha, "uniform")
    published = temporal_step_sizes(v, alpha, "published")
    inverse = temporal_step_sizes(v, alpha, "inverse")
    normalized = temporal_step_sizes(v, alpha, "normalized")
    assert torch.allclose(uniform, torch.full_like(v, alpha))
    # normalized: the published shape (larger accumulated gradient -> smaller step), the uniform step on average
    assert normalized.mean().item() == pytest.approx(alpha)
    assert (normalized.diff(dim=1) < 0).all()
    torch.testing.assert_close(normalized / normalized[:, :1], published / published[:, :1])
    many = temporal_step_sizes(torch.rand(5, 8) * 50, alpha, "normalized")
    torch.testing.assert_close(many.mean(dim=1), torch.full((5,), alpha))
    assert published[0, 0] == pytest.approx(alpha) and (published <= alpha + 1e-12).all()
    assert (published.diff(dim=1) < 0).all(), "published: larger accumulated gradient -> smaller step"
    assert (inverse.diff(dim=1) > 0).all(), "inverse: larger accumulated gradient -> larger step"
    assert inverse.mean().item() == pytest.approx(alpha)
    expected = alpha / (1 + torch.log(1 + torch.sqrt(v)))
    assert torch.allclose(published, expected)
    with pytest.raises(ValueError, match="temporal_step"):
        temporal_step_sizes(v, alpha, "adaptive")


def test_temporal_rules_change_the_attack(model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    results = {
        rule: build_attack("tla-m", steps=3, temporal_step=rule).perturb(model, x, y)
        for rule in ("published", "uniform", "inverse", "normalized")
    }
    assert not torch.equal(results["published"], results["uniform"])
    assert not torch.equal(results["inverse"], results["uniform"])
    assert not torch.equal(results["normalized"], results["published"])


def test_normalized_step_moves_as_far_as_the_uniform_one(model, batch):
    """The published rule shrinks every frame's step below the uniform one, so its perturbation stays far inside the
    ball; the normalized rule keeps the published per-frame shape at the uniform mean step (one step, no start)."""
    x, y = batch["pixel_values"], batch["labels"]
    eps = 8 / 255
    energy = {}
    for rule in ("uniform", "published", "normalized"):
        attack = build_attack(
            "tla-m",
            eps=eps,
            steps=1,
            step_size=eps / 2,
            random_start=False,
            temporal_step=rule,
            selection="last",
            lipschitz_weight=0.0,
        )
        delta = attack.perturb(model, x, y) - x
        energy[rule] = delta.abs().mean(dim=(2, 3, 4))  # (batch, frames): the frame's step, away from the box
    assert (energy["published"].mean(dim=1) < 0.9 * energy["uniform"].mean(dim=1)).all()
    torch.testing.assert_close(energy["normalized"].mean(dim=1), energy["uniform"].mean(dim=1), rtol=0.05, atol=1e-4)


def test_apgd_checkpoints_follow_the_paper():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, ..."""
    assert build_attack("apgd-ce", steps=100).checkpoints() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert build_attack("apgd-dlr", steps=10).checkpoints() == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert build_attack("apgd-ce").step_size == pytest.approx(2 * 8 / 255)


def test_square_p_schedule():
    from hf_videomoe.attacks.square import square_p_schedule

    assert square_p_schedule(0, 10000, 0.8) == 0.8
    assert square_p_schedule(11, 10000, 0.8) == 0.4
    assert square_p_schedule(9999, 10000, 0.8) == pytest.approx(0.8 / 512)
    assert square_p_schedule(0, 100, 0.8) == 0.8 and square_p_schedule(1, 100, 0.8) == 0.2  # 1/100 = 100/10k


def test_seed_none_dtype_and_progress(model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    rng_state = torch.get_rng_state()
    first = build_attack("pgd", steps=2, seed=None).perturb(model, x, y)
    second = build_attack("pgd", steps=2, seed=None).perturb(model, x, y)
    assert not torch.equal(first, second) and torch.equal(torch.get_rng_state(), rng_state)
    adv64 = build_attack("pgd", steps=2, progress=True).perturb(model, x.double(), y)
    assert adv64.dtype == torch.float64
    assert torch.allclose(adv64.float(), build_attack("pgd", steps=2).perturb(model, x, y))


def test_early_stop_does_not_change_results(trained):
    """With misclassification-first selection a fooled sample's output is its first fooling iterate, so stopping it
    early only saves compute."""
    model, x, y = trained
    kwargs = dict(eps=3 / 255, steps=5)
    plain = build_attack("pgd", **kwargs).perturb(model, x, y)
    stopped = build_attack("pgd", early_stop=True, **kwargs).perturb(model, x, y)
    assert ((plain - stopped).abs() > 1e-5).float().mean() < 1e-3


def test_restarts_never_hurt(trained):
    model, x, y = trained
    one = correct(model, build_attack("pgd", eps=2 / 255, steps=3).perturb(model, x, y), y)
    two = correct(model, build_attack("pgd", eps=2 / 255, steps=3, restarts=3).perturb(model, x, y), y)
    assert not (two & ~one).any(), "a sample fooled with one restart must stay fooled with more"


def test_selection_last_returns_final_iterate(model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    last = build_attack("pgd", steps=3, selection="last").perturb(model, x, y)
    best = build_attack("pgd", steps=3).perturb(model, x, y)
    assert_in_threat_model(last, x, EPS, "linf")
    # The untrained 8-class model misclassifies most clean clips: best-iterate keeps the first (random-start) iterate
    # for those, "last" moves on.
    assert not torch.equal(last, best)


def test_targeted_mode(trained):
    model, x, y = trained
    targets = (y + 1) % 4
    adv = build_attack("pgd", eps=0.25, steps=5, targeted=True)(
        model, {"pixel_values": x, "labels": y, "target_labels": targets}
    )["pixel_values"]
    with torch.no_grad():
        hit = (model(adv).logits.argmax(-1) == targets).float().mean().item()
    assert hit >= 0.9
    default = build_attack("apgd-dlr", eps=0.25, steps=5, targeted=True).perturb(model, x, y)  # least-likely class
    assert accuracy(model, default, y) <= 0.1
    with pytest.raises(ValueError, match="targeted"):
        build_attack("tlga-r", targeted=True)


# ----------------------------------------------------------------------------------------------------------------------
# Attack strength on a trained (undefended) model
# ----------------------------------------------------------------------------------------------------------------------


def test_pgd_breaks_undefended_model(trained):
    model, x, y = trained
    assert accuracy(model, x, y) >= 0.9
    adv = build_attack("pgd", eps=EPS, steps=10).perturb(model, x, y)
    assert accuracy(model, adv, y) < 0.1


@pytest.mark.parametrize("name", ["pgd", "tla-m", "j-tlga"])
def test_more_steps_never_raise_robust_accuracy(name, trained):
    """Same seed and step size: the 2K-step run extends the K-step trajectory, and best-iterate keeps every success."""
    model, x, y = trained
    kwargs = dict(eps=2 / 255, step_size=0.5 / 255, seed=5)
    short = correct(model, build_attack(name, steps=3, **kwargs).perturb(model, x, y), y)
    long = correct(model, build_attack(name, steps=6, **kwargs).perturb(model, x, y), y)
    assert not (long & ~short).any()
    assert long.float().mean() <= short.float().mean()


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "j-tlga"])
def test_huge_budget_reaches_chance(name, trained):
    model, x, y = trained
    adv = build_attack(name, eps=0.5, steps=5).perturb(model, x, y)
    assert accuracy(model, adv, y) <= 0.25  # 4 classes


def test_pgd_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    eps = 2 / 255
    fgsm = accuracy(model, build_attack("fgsm", eps=eps).perturb(model, x, y), y)
    pgd = accuracy(model, build_attack("pgd", eps=eps, steps=10).perturb(model, x, y), y)
    assert pgd <= fgsm
    assert fgsm < 1.0, "FGSM should already hurt"


def test_apgd_at_least_as_strong_as_pgd(trained):
    model, x, y = trained
    eps, steps = 2 / 255, 20
    pgd = accuracy(model, build_attack("pgd", eps=eps, steps=steps).perturb(model, x, y), y)
    apgd = accuracy(model, build_attack("apgd-ce", eps=eps, steps=steps).perturb(model, x, y), y)
    assert apgd <= pgd


def test_apgd_t_more_targets_never_weaker_and_fixed_settings(trained, tiny_videomae_config):
    """APGD-T runs its first target exactly as with one target, then only adds targets on the clips still standing:
    the clips it fools with three targets include those it fools with one."""
    model, x, y = trained
    eps, steps = 2 / 255, 10
    one = ~correct(model, build_attack("apgd-t", eps=eps, steps=steps, num_target_classes=1).perturb(model, x, y), y)
    three = ~correct(model, build_attack("apgd-t", eps=eps, steps=steps, num_target_classes=3).perturb(model, x, y), y)
    assert bool((three | ~one).all()) and int(three.sum()) >= int(one.sum())
    assert accuracy(model, build_attack("apgd-t", eps=16 / 255, steps=steps).perturb(model, x, y), y) < 0.5
    for fixed in ({"loss": "ce"}, {"targeted": True}):
        with pytest.raises(TypeError, match="does not take|fixed"):
            build_attack("apgd-t", **fixed)
    three_classes = VideoMAEMoeForVideoClassification(tiny_videomae_config(num_experts=4, num_labels=3)).eval()
    with pytest.raises(ValueError, match="at least 4 classes"):
        build_attack("apgd-t", steps=1).perturb(three_classes, x[:2], torch.tensor([0, 1]))


def test_square_is_a_working_black_box_attack(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    adv = build_attack("square", eps=16 / 255, steps=100).perturb(model, x, y)
    assert accuracy(model, adv, y) < clean - 0.2


def test_joint_attack_combines_its_parts(trained):
    """J-TLGA = TLA-M's classification loss + TLGA-R's router loss on one perturbation. Per sample, the evaluator's
    worst case over {j-tlga, tla-m, tlga-r} is never above any part; the joint attack misclassifies at least as much as
    each part and, through its router term, moves routing more than the model part alone.

    (On this toy model, trained with the straight-through gate, routing matters: TLGA-R alone, which never sees the
    labels, fools every clip, and TLA-M moves about half of the routing decisions on its own.)"""
    model, x, y = trained
    kwargs = dict(eps=EPS, steps=10)
    advs = {name: build_attack(name, **kwargs).perturb(model, x, y) for name in ("j-tlga", "tla-m", "tlga-r")}
    ok = {name: correct(model, adv, y) for name, adv in advs.items()}
    worst = ok["j-tlga"] & ok["tla-m"] & ok["tlga-r"]
    for name in ok:
        assert not (worst & ~ok[name]).any()
    acc = {name: v.float().mean().item() for name, v in ok.items()}
    change = {name: routing_change(model, x, adv)["overall"] for name, adv in advs.items()}
    assert acc["j-tlga"] <= min(acc["tla-m"], acc["tlga-r"])
    assert change["j-tlga"] > change["tla-m"]


def test_expert_attack_fools_the_expert(trained):
    model, x, y = trained
    adv = build_attack("tla-e", eps=EPS, steps=10).perturb(model, x, y)
    expert = O.dominant_expert(model(x).router_logits)
    fooled = 0
    with torch.no_grad():
        for e in expert.unique().tolist():
            index = (expert == e).nonzero().squeeze(1)
            with force_experts(model, e):
                fooled += (model(adv[index]).logits.argmax(-1) != y[index]).sum().item()
    assert fooled / len(y) >= 0.5


# ----------------------------------------------------------------------------------------------------------------------
# Routing diagnostics
# ----------------------------------------------------------------------------------------------------------------------


def test_routing_change_zero_at_eps_zero_and_rises(trained):
    model, x, _ = trained
    same = build_attack("pgd-r", eps=0.0).perturb(model, x)
    result = routing_change(model, x, same)
    assert result["overall"] == 0.0 and result["per_layer"] == [0.0, 0.0]
    changes = [
        routing_change(model, x, build_attack("pgd-r", eps=e, steps=5).perturb(model, x))["overall"]
        for e in (1 / 255, 4 / 255, 16 / 255)
    ]
    assert changes[0] < changes[1] < changes[2]


@pytest.mark.parametrize("name", ROUTER_ONLY)
def test_router_attacks_change_routing(name, trained):
    model, x, _ = trained
    adv = build_attack(name, eps=EPS, steps=10).perturb(model, x)  # no labels needed
    assert routing_change(model, x, adv)["overall"] > 0.5
    noise = (x + EPS * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    assert routing_change(model, x, adv)["overall"] > 2 * routing_change(model, x, noise)["overall"]


def test_tlga_r_steers_toward_weakest_expert(trained):
    """The guidance term sends routing units to the clip's weakest clean expert, which PGD-R does not aim for."""
    model, x, _ = trained
    with torch.no_grad():
        weakest = O.weakest_expert(model(x).router_logits)

    def share_on_weakest(pixels):
        with torch.no_grad():
            chosen = selected_experts(model(pixels).router_logits, 1)
        return torch.stack([(c[..., 0] == weakest[:, None]).float().mean() for c in chosen]).mean().item()

    clean = share_on_weakest(x)
    guided = share_on_weakest(build_attack("tlga-r", eps=EPS, steps=10).perturb(model, x))
    unguided = share_on_weakest(build_attack("pgd-r", eps=EPS, steps=10).perturb(model, x))
    # (Measured on this model: 14 % clean, 34 % after PGD-R, 51 % after TLGA-R.)
    assert guided > 3 * clean and guided > unguided + 0.1


def test_diagnostics(trained, tiny_dense_model):
    model, x, _ = trained
    usage = expert_usage(model, x, batch_size=10)
    assert len(usage) == 2 and all(u.shape == (4,) and u.sum().item() == pytest.approx(1.0) for u in usage)
    assert router_lipschitz(model, x, x) == 0.0
    adv = build_attack("tla-r", steps=3).perturb(model, x)
    lips = router_lipschitz(model, x, adv)
    assert lips > 0
    assert lips == pytest.approx(router_lipschitz(model, x, adv, batch_size=5), rel=1e-4)
    per_chunk = routing_change(model, x, adv, batch_size=7)
    assert per_chunk["overall"] == pytest.approx(routing_change(model, x, adv)["overall"], abs=1e-6)
    assert len(per_chunk["per_layer"]) == 2
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        expert_usage(tiny_dense_model(), x)


# ----------------------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------------------


def test_objective_functions(model, batch):
    x = batch["pixel_values"]
    with torch.no_grad():
        out = model(x)
    logits, router_logits = out.logits, out.router_logits
    y = batch["labels"]
    assert O.lipschitz_ratio(logits, logits, x, x).eq(0).all()  # guarded, not NaN
    x2 = x + 0.01
    ratio = O.lipschitz_ratio(logits, logits + 1.0, x, x2)
    assert torch.allclose(ratio, torch.full((4,), 1.0 / 1e-4), rtol=1e-3)
    assert O.router_lipschitz_ratio(router_logits, router_logits, x, x2).eq(0).all()
    assert O.ce_loss(logits, y).shape == (4,)
    # DLR: sign tells misclassification, invariant to scale and shift
    dlr = O.dlr_loss(logits, y)
    assert ((dlr > 0) == (logits.argmax(-1) != y)).all()
    assert torch.allclose(O.dlr_loss(3 * logits + 1, y), dlr, atol=1e-5)
    targets = (y + 1) % 8
    assert O.dlr_targeted_loss(logits, y, targets).shape == (4,)
    assert ((O.margin_loss(logits, y) <= 0) == (logits.argmax(-1) != y)).all()
    # router CE against one's own top-1 is the mean -log max-probability
    own = O.router_consistency_ce(router_logits, router_logits)
    expected = torch.stack([-r.log_softmax(-1).amax(-1).mean(1) for r in router_logits]).mean(0)
    assert torch.allclose(own, expected, atol=1e-6)
    weakest, dominant = O.weakest_expert(router_logits), O.dominant_expert(router_logits)
    assert weakest.shape == (4,) and weakest.dtype == torch.long and (weakest != dominant).all()
    assert (O.guidance_ce(router_logits, weakest) > O.guidance_ce(router_logits, dominant)).all()
    with pytest.raises(ValueError, match="router logits"):
        O.router_consistency_ce(None, router_logits)
    with pytest.raises(ValueError, match="3 classes"):
        O.dlr_loss(torch.randn(2, 2), torch.tensor([0, 1]))


def test_objective_matches_the_paper_formula(model, batch):
    """The fused Objective equals l*_MoE = CE + λ_F·Lip(F) + γ2·(CE_R + λ_R·Lip(R) − γ1·CE(R, weakest)) written with
    the public building blocks; λ_F and λ_R differ, so each must weigh its own ratio (and both ratios must count)."""
    x, y = batch["pixel_values"], batch["labels"]
    lam, lam_router, g1, g2 = 2.0, 20.0, 0.7, 1.3  # large: the ratios of an untrained model are ~0.01
    objective = build_attack(
        "j-tlga", lipschitz_weight=lam, router_lipschitz_weight=lam_router, guidance_weight=g1, router_weight=g2
    ).build_objective()
    adv = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        ctx = objective.prepare(model, x, y)
        value = objective(model, adv, ctx).value
        clean, attacked = model(x), model(adv)
    model_ratio = O.lipschitz_ratio(clean.logits, attacked.logits, x, adv)
    router_ratio = O.router_lipschitz_ratio(clean.router_logits, attacked.router_logits, x, adv)
    router = (
        O.router_consistency_ce(attacked.router_logits, clean.router_logits)
        + lam_router * router_ratio
        - g1 * O.guidance_ce(attacked.router_logits, O.weakest_expert(clean.router_logits))
    )
    expected = O.ce_loss(attacked.logits, y) + lam * model_ratio + g2 * router
    assert torch.allclose(value, expected, rtol=1e-4, atol=1e-5)
    # Both weighted ratios are far above the tolerance, and so is what swapping the two λs would change: leaving a
    # ratio out or weighing it with the other component's λ fails the check above.
    assert (lam * model_ratio > 1e-3).all() and (g2 * lam_router * router_ratio > 1e-3).all()
    assert ((lam_router - lam) * (model_ratio - g2 * router_ratio)).abs().max() > 1e-3


def test_fixed_lipschitz_denominator_keeps_the_value_and_drops_its_gradient(model, batch):
    """``lipschitz_denominator="fixed"``: the same objective value, but the input gradient is that of
    ``λ·MSE(F(x), F(x+δ)) / MSE(x, x+δ)`` with the denominator held constant — the paper's gradient also pushes δ to
    shrink (which raises the ratio)."""
    x, y = batch["pixel_values"], batch["labels"]
    lam = 1e-3
    adv = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    values, grads = {}, {}
    for mode in ("gradient", "fixed"):
        objective = build_attack(
            "j-tlga", lipschitz_weight=lam, router_lipschitz_weight=lam, lipschitz_denominator=mode
        ).build_objective()
        assert objective.lipschitz_denominator == mode
        with torch.no_grad():
            ctx = objective.prepare(model, x, y)
        point = adv.clone().requires_grad_(True)
        value = objective(model, point, ctx).value
        (grads[mode],) = torch.autograd.grad(value.sum(), point)
        values[mode] = value.detach()
    torch.testing.assert_close(values["fixed"], values["gradient"])
    # The difference is exactly the gradient of the denominator term, λ·R·(-1/D)·∂D, for both Lipschitz ratios.
    with torch.no_grad():
        clean, attacked = model(x), model(adv)
        numerator = O.per_sample_mse(clean.logits, attacked.logits) + O.router_lipschitz_ratio(
            clean.router_logits, attacked.router_logits, x, adv
        ) * O.per_sample_mse(x, adv)
    point = adv.clone().requires_grad_(True)
    denominator_term = lam * numerator / (O.per_sample_mse(x, point) + O.LIPSCHITZ_EPS)
    (expected,) = torch.autograd.grad(denominator_term.sum(), point)
    torch.testing.assert_close(grads["gradient"] - grads["fixed"], expected, rtol=1e-3, atol=1e-7)
    assert build_attack("tla-m").settings()["lipschitz_denominator"] == "fixed"
    with pytest.raises(ValueError, match="lipschitz_denominator"):
        build_attack("tla-r", lipschitz_denominator="detached")
    with pytest.raises(TypeError, match="lipschitz_denominator"):
        build_attack("pgd", lipschitz_denominator="fixed")


def test_objectives_computed_once_per_call(batch, tiny_moe_model):
    """Clean outputs are computed once per attack call: a J-TLGA with K steps costs K+1 forwards with gradients...
    K forward/backward passes, 1 clean forward and 1 forward for the last iterate."""
    model = tiny_moe_model().eval()
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(torch.is_grad_enabled()))
    build_attack("j-tlga", steps=4).perturb(model, batch["pixel_values"], batch["labels"])
    handle.remove()
    assert calls.count(True) == 4 and calls.count(False) == 2


def test_router_consistency_soft_targets():
    """Hard targets: CE toward the clean top-1, which keeps pushing even when routing is unchanged (sharpening). Soft
    targets: CE toward the clean probabilities, equal to the clean entropy and stationary when routing is unchanged."""
    from hf_videomoe.attacks.objectives import router_consistency_ce

    clean = (torch.randn(3, 5, 4),)
    adv = (clean[0].clone().requires_grad_(True),)
    probs = clean[0].softmax(-1)
    hard = router_consistency_ce(adv, clean)
    torch.testing.assert_close(hard, -probs.max(-1).values.log().mean(1))
    soft = router_consistency_ce(adv, clean, soft_targets=True)
    torch.testing.assert_close(soft, -(probs * probs.log()).sum(-1).mean(1))
    (soft_grad,) = torch.autograd.grad(soft.sum(), adv)
    (hard_grad,) = torch.autograd.grad(router_consistency_ce(adv, clean).sum(), adv)
    assert soft_grad.abs().max() < 1e-6 < hard_grad.abs().max()


@pytest.mark.parametrize("name", ["j-tlga", "tlga-r", "tla-m"])
def test_precomputed_clean_outputs_skip_the_clean_pass_and_change_nothing(name, batch, tiny_moe_model):
    """A caller that already ran the clean pass (the trainers) hands it over: one forward fewer, the same examples."""
    model = tiny_moe_model().eval()
    x, y = batch["pixel_values"], batch["labels"]
    attack = build_attack(name, steps=3, seed=0, **({"lipschitz_weight": 1e-3} if name == "tla-m" else {}))
    with torch.no_grad():
        out = model.eval()(pixel_values=x, output_router_logits=True)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(torch.is_grad_enabled()))
    reference = attack.perturb(model, x, y)
    own = len(calls)
    shared = attack.perturb(model, x, y, clean_outputs=(out.logits, out.router_logits))
    handle.remove()
    assert len(calls) - own == own - 1
    assert torch.equal(shared, reference)
    with pytest.raises(ValueError, match="clean_outputs"):
        attack.perturb(model, x, y, clean_outputs=(out.logits[:2], out.router_logits))
    with pytest.raises(TypeError, match="clean_outputs"):
        attack.perturb(model, x, y, clean_outputs=out.logits)


# ----------------------------------------------------------------------------------------------------------------------
# Other models and granularities
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_dense_models(name, batch, tiny_dense_model):
    dense = NormalizedModel(tiny_dense_model())
    attack = build_attack(name, **fast_kwargs(name))
    if name in DENSE_ATTACKS:
        adv = attack.perturb(dense, batch["pixel_values"], batch["labels"])
        assert_in_threat_model(adv, batch["pixel_values"], EPS, "linf")
    else:
        with pytest.raises(
            ValueError,
            match="Attacks that apply to dense models: fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, square, tt, tla-m",
        ):
            attack.perturb(dense, batch["pixel_values"], batch["labels"])


def test_dense_model_on_normalised_inputs_with_bounds_none(batch, tiny_dense_model):
    dense = tiny_dense_model()
    normalised = (batch["pixel_values"] - 0.45) / 0.225
    with pytest.raises(ValueError, match="NormalizedModel"):
        build_attack("pgd", steps=2).perturb(dense, normalised, batch["labels"])
    adv = build_attack("pgd", steps=2, bounds=None).perturb(dense, normalised, batch["labels"])
    assert (adv - normalised).abs().max() <= EPS + 1e-5 and not torch.equal(adv, normalised)


@pytest.mark.parametrize("granularity", ["frame", "clip"])
@pytest.mark.parametrize("name", ["tlga-r", "tla-e", "j-tlga"])
def test_granularities_and_timesformer(name, granularity, batch, tiny_moe_model, tiny_timesformer_config):
    x, y = batch["pixel_values"], batch["labels"]
    torch.manual_seed(0)
    timesformer = TimesformerMoeForVideoClassification(tiny_timesformer_config(router_granularity=granularity)).eval()
    videomae = tiny_moe_model(router_granularity=granularity).eval()
    for model in (timesformer, videomae):
        adv = build_attack(name, steps=2).perturb(model, x, y)
        assert_in_threat_model(adv, x, EPS, "linf")
        assert not torch.equal(adv, x)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise(model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    pgd = build_attack("pgd", steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd.perturb(model, x * 255, y)
    with pytest.raises(ValueError, match="rank 5"):
        pgd.perturb(model, x[:, 0], y)
    with pytest.raises(TypeError, match="float"):
        pgd.perturb(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="NaN"):
        pgd.perturb(model, torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        pgd.perturb(model, x, y[:3])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pgd.perturb(model, x, torch.tensor([0, 1, 2, 8]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pgd.perturb(model, x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(TypeError, match="integer"):
        pgd.perturb(model, x, y.float())
    with pytest.raises(ValueError, match="needs `labels`"):
        pgd.perturb(model, x)
    with pytest.raises(TypeError, match="mapping"):
        pgd(model, x)
    with pytest.raises(ValueError, match="no 'pixel_values'"):
        pgd(model, {"labels": y})
    with pytest.raises(TypeError, match="nn.Module"):
        pgd.perturb(lambda v: v, x, y)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_bad_settings_raise(name):
    with pytest.raises(ValueError, match="eps"):
        build_attack(name, eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        build_attack(name, steps=-1)
    with pytest.raises(TypeError, match="steps"):
        build_attack(name, steps=2.5)
    with pytest.raises(ValueError, match="Unknown norm"):
        build_attack(name, norm="l1")
    with pytest.raises(ValueError, match="restarts"):
        build_attack(name, restarts=0)
    with pytest.raises(TypeError, match="eps"):
        build_attack(name, eps=float("nan"))


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="Did you mean 'j-tlga'.*Valid names: fgsm, pgd"):
        build_attack("jtlga")
    with pytest.raises(ValueError, match="Did you mean 'apgd-ce'"):
        build_attack("apgdce")
    with pytest.raises(ValueError, match="Unknown temporal_step"):
        build_attack("tla-m", temporal_step="adaptive")
    with pytest.raises(ValueError, match="temporal_momentum"):
        build_attack("tla-m", temporal_momentum=1.5)
    with pytest.raises(ValueError, match="early_stop"):
        build_attack("pgd-r", early_stop=True)
    with pytest.raises(ValueError, match="lipschitz_weight"):
        build_attack("tla-m", lipschitz_weight=-1.0)
    with pytest.raises(ValueError, match="Unknown loss"):
        build_attack("pgd", loss="hinge")
    with pytest.raises(ValueError, match="bounds"):
        build_attack("pgd", bounds=(1.0, 0.0))


def test_router_attack_without_routers_names_the_alternatives(batch):
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4 * 3 * 16 * 16, 8)

        def forward(self, pixel_values):
            return self.linear(pixel_values.flatten(1))

    plain = Plain()
    adv = build_attack("tla-m", steps=2).perturb(plain, batch["pixel_values"], batch["labels"])
    assert_in_threat_model(adv, batch["pixel_values"], EPS, "linf")
    match = "needs a Mixture-of-Experts model.*fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, square, tt, tla-m"
    with pytest.raises(ValueError, match=match):
        build_attack("pgd-r").perturb(plain, batch["pixel_values"], batch["labels"])


# ----------------------------------------------------------------------------------------------------------------------
# datasets transform
# ----------------------------------------------------------------------------------------------------------------------


def test_as_transform_with_datasets(trained):
    from datasets import Dataset

    model, x, y = trained
    ds = Dataset.from_dict({"pixel_values": x[:6].numpy(), "labels": y[:6].tolist(), "video_id": list("abcdef")})
    attack = build_attack("pgd", eps=EPS, steps=5)
    adv_ds = ds.with_transform(attack.as_transform(model))
    rows = adv_ds[0:6]
    assert rows["video_id"] == list("abcdef") and rows["labels"] == y[:6].tolist()
    adv = torch.stack(rows["pixel_values"])
    assert_in_threat_model(adv, x[:6], EPS, "linf")
    assert torch.allclose(adv, attack.perturb(model, x[:6], y[:6]), atol=1e-6)
    assert accuracy(model, adv, y[:6]) < 0.5
    single = adv_ds[2]  # one row: datasets calls the transform on a batch of one
    assert torch.allclose(single["pixel_values"], adv[2], atol=1e-6)
    # torch-formatted columns (tensors) work too
    tensor_ds = ds.with_format("torch")
    out = attack.as_transform(model)(tensor_ds[0:3])
    assert len(out["pixel_values"]) == 3 and torch.allclose(torch.stack(out["pixel_values"]), adv[:3], atol=1e-6)
    # the unmodified dataset is untouched
    assert torch.allclose(torch.tensor(ds[0:6]["pixel_values"]), x[:6])


# Square always starts at random; FGSM is one step of ε by definition (its `steps` is accepted and ignored).
@pytest.mark.parametrize("name", [n for n in CONTRACT_NAMES if n not in ("square", "fgsm")])
def test_zero_steps_without_random_start_return_the_input(name, model, batch):
    adv = build_attack(name, steps=0, random_start=False).perturb(model, batch["pixel_values"], batch["labels"])
    assert torch.equal(adv, batch["pixel_values"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_steps_within_the_ball_are_projected_not_rescaled(norm, model, batch):
    """With steps · α < ε the iterates never reach the sphere: the perturbation is at most steps · α, not pushed or
    rescaled out to ε."""
    x, y = batch["pixel_values"], batch["labels"]
    eps = 8 / 255 if norm == "linf" else 0.5
    alpha = eps / 4
    adv = build_attack("pgd", eps=eps, steps=2, step_size=alpha, norm=norm, random_start=False).perturb(model, x, y)
    delta = (adv - x).reshape(x.shape[0], -1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= 2 * alpha + 1e-6).all()) and bool((size > 0).any())


def test_each_lipschitz_weight_reaches_its_own_term():
    """λ_F (``lipschitz_weight``) weighs only the model / expert ratio, λ_R (``router_lipschitz_weight``) only the
    router's; router attacks take λ_R as their ``lipschitz_weight``; every default is the calibrated one."""
    from hf_videomoe.attacks import (
        DEFAULT_EXPERT_LIPSCHITZ_WEIGHT,
        DEFAULT_LIPSCHITZ_WEIGHT,
        DEFAULT_ROUTER_LIPSCHITZ_WEIGHT,
    )

    joint = build_attack("j-tla").build_objective()
    assert joint.lipschitz_weight == DEFAULT_LIPSCHITZ_WEIGHT
    assert joint.router_lipschitz_weight == pytest.approx(DEFAULT_ROUTER_LIPSCHITZ_WEIGHT)
    assert build_attack("tla-r").build_objective().router_lipschitz_weight == DEFAULT_ROUTER_LIPSCHITZ_WEIGHT
    assert build_attack("tla-e").build_objective().lipschitz_weight == DEFAULT_EXPERT_LIPSCHITZ_WEIGHT
    assert build_attack("tla-m").build_objective().lipschitz_weight == DEFAULT_LIPSCHITZ_WEIGHT
    only_router = build_attack("j-tla", lipschitz_weight=0.0, router_lipschitz_weight=0.5).build_objective()
    assert only_router.lipschitz_weight == 0.0 and only_router.router_lipschitz_weight == 0.5
    only_model = build_attack("j-tla", lipschitz_weight=0.5, router_lipschitz_weight=0.0).build_objective()
    assert only_model.lipschitz_weight == 0.5 and only_model.router_lipschitz_weight == 0.0
    with pytest.raises(ValueError, match="router_lipschitz_weight"):
        build_attack("j-tlga", router_lipschitz_weight=-1.0)


def test_dlr_joint_attack_maximises_the_dlr_loss(model, batch):
    """``loss="dlr"`` swaps the classification term: the objective's value is the DLR loss (λ, γ2 off)."""
    x, y = batch["pixel_values"], batch["labels"]
    objective = build_attack("j-tlga", loss="dlr", lipschitz_weight=0.0, router_weight=0.0).build_objective()
    with torch.no_grad():
        ctx = objective.prepare(model, x, y)
        out = objective(model, x, ctx)
        torch.testing.assert_close(out.value, O.dlr_loss(model(x).logits, y))
    adv = build_attack("j-tlga", loss="dlr", steps=3).perturb(model, x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_tt_averages_the_gradients_of_shifted_clips(model, batch):
    """TT's step direction is the weighted sum of the gradients at the temporally rolled clips (rolled back); with
    ``max_shift=0`` it is PGD without random start and a step of ε/steps."""
    from hf_videomoe.attacks.temporal_translation import translation_weights

    x, y = batch["pixel_values"], batch["labels"]
    for kernel in ("gaussian", "linear", "uniform"):
        weights = translation_weights(2, kernel)
        assert len(weights) == 5 and sum(weights) == pytest.approx(1.0) and weights[2] == max(weights)
    attack = build_attack("tt", max_shift=1, kernel="uniform")
    assert attack.shifts_for(8) == [(-1, pytest.approx(1 / 3)), (0, pytest.approx(1 / 3)), (1, pytest.approx(1 / 3))]
    assert [s for s, _ in build_attack("tt").shifts_for(8)] == [-2, -1, 0, 1, 2]
    objective = attack.build_objective()
    ctx = objective.prepare(model, x, y)
    point = x.clone().requires_grad_(True)
    out, grad = attack._objective_and_gradient(model, point, ctx, objective)
    expected = torch.zeros_like(x)
    for shift in (-1, 0, 1):
        rolled = torch.roll(x, shifts=shift, dims=1).requires_grad_(True)
        loss = O.ce_loss(model(rolled).logits, y).sum()
        (g,) = torch.autograd.grad(loss, rolled)
        expected += torch.roll(g, shifts=-shift, dims=1) / 3
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.value, O.ce_loss(model(x).logits, y))
    no_shift = build_attack("tt", max_shift=0, steps=3).perturb(model, x, y)
    pgd = build_attack("pgd", steps=3, step_size=EPS / 3, random_start=False).perturb(model, x, y)
    torch.testing.assert_close(no_shift, pgd)
    with pytest.raises(ValueError, match="kernel"):
        build_attack("tt", kernel="box")


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_per_sample_eps_vector(name, model, batch):
    """A per-clip ε vector filled with one value gives exactly the scalar attack's result; a mixed vector keeps every
    clip in its own ball and gives each clip what the scalar attack with its budget gives it."""
    x, y = batch["pixel_values"], batch["labels"]
    attack = build_attack(name, **fast_kwargs(name))
    scalar = attack.perturb(model, x, y)
    # float64: a float32 tensor would round 8/255 to a (slightly) different budget
    assert torch.equal(attack.perturb(model, x, y, eps=torch.full((4,), EPS, dtype=torch.float64)), scalar)
    assert torch.equal(attack.perturb(model, x, y, eps=[EPS] * 4), scalar)
    budgets = torch.tensor([EPS, 2 / 255, EPS, 0.0], dtype=torch.float64)
    mixed = attack.perturb(model, x, y, eps=budgets)
    assert ((mixed - x).flatten(1).abs().amax(dim=1) <= budgets + 1e-6).all()
    assert torch.equal(mixed[3], x[3])  # ε = 0: the clean clip
    small = build_attack(name, eps=2 / 255, **fast_kwargs(name)).perturb(model, x[1:2], y[1:2])
    assert torch.equal(mixed[[0, 2]], scalar[[0, 2]]) and torch.equal(mixed[1:2], small)


def test_per_sample_eps_errors(model, batch):
    x, y = batch["pixel_values"], batch["labels"]
    attack = build_attack("pgd", steps=1)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        attack.perturb(model, x, y, eps=torch.full((3,), EPS))
    with pytest.raises(ValueError, match="one budget per clip"):
        attack.perturb(model, x, y, eps=[EPS, EPS])
    with pytest.raises(ValueError, match="finite number >= 0"):
        attack.perturb(model, x, y, eps=torch.tensor([EPS, -1.0, EPS, EPS]))
    with pytest.raises(ValueError, match="larger than the whole pixel range"):
        attack.perturb(model, x, y, eps=[EPS, 2.0, EPS, EPS])
    with pytest.raises(TypeError, match="eps must be"):
        attack.perturb(model, x, y, eps="8/255")
    attack.eps = 2.0  # what per-clip budgets do on a copy of the attack: check_budget is the public check
    with pytest.raises(ValueError, match="larger than the whole pixel range"):
        attack.check_budget()
