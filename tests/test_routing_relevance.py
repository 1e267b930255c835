"""Routing relevance: random / forced / recorded routing, expert diversification, and the evaluator's controls."""

import pytest
import torch

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.evaluation import evaluate_robustness
from hf_videomoe.moe import (
    cluster_routers,
    diversify_experts,
    force_experts,
    frozen_routing_predictions,
    moe_blocks,
    override_routing,
    random_routing,
    record_routing,
    routing_relevance,
)


def clips(n=48, seed=1):
    return torch.rand(n, 4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def predictions(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits.argmax(-1)


@pytest.fixture(scope="module")
def model_with_a_bad_router(tiny_moe_model):
    """Factory: ``model_with_a_bad_router(seed=0)`` -> (model, clips, labels). Model-level routing built so that the
    router always picks expert 0, expert 0 differs from experts 1-3 (which are identical), and the labels are the
    predictions of path 1: learned routing is *worse* than random routing."""

    def make(seed=0):
        model = tiny_moe_model(seed, router_granularity="model").eval()
        with torch.no_grad():
            for block in moe_blocks(model):
                for param in (block.experts.up_proj, block.experts.down_proj):
                    param.mul_(5.0)
                    param[2:] = param[1]
            first_layer = model.videomae.encoder.layer[0]
            first_layer.layernorm_after.bias[0] = 10.0  # a feature that is always large...
            router = moe_blocks(model)[0].router
            router.weight.zero_()
            router.weight[0, 0] = 10.0  # ...and a router that reads only it, for expert 0
        x = clips()
        with force_experts(model, 1):
            labels = predictions(model, x)
        return model, x, labels

    return make


def test_relevance_of_identical_experts_is_nil(tiny_dense_model):
    moe = VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), image_mean=[0.0] * 3, image_std=[1.0] * 3)
    x = clips()
    labels = predictions(moe, x)
    relevance = routing_relevance(moe, x, labels)
    assert relevance["learned"] == relevance["random"] == 1.0
    assert relevance["forced"] == [1.0] * 4 and relevance["forced_spread"] == 0.0
    assert relevance["forced_disagreement"] == 0.0 and relevance["forced_oracle"] == 1.0
    assert relevance["learned_minus_random"] == 0.0 and relevance["learned_minus_random_se"] == 0.0


def test_relevance_on_experts_built_to_differ(model_with_a_bad_router):
    model, x, labels = model_with_a_bad_router()
    relevance = routing_relevance(model, x, labels, batch_size=16)
    assert relevance["forced"][1] == relevance["forced"][2] == relevance["forced"][3] == 1.0
    assert relevance["forced"][0] < 0.5
    assert relevance["learned"] == relevance["forced"][0]  # the router always picks expert 0
    assert relevance["random"] > relevance["learned"] + 0.3  # 3 paths in 4 are the labels' path
    assert relevance["learned_minus_random"] < -3 * relevance["learned_minus_random_se"]
    assert relevance["forced_spread"] > 0.5
    # paths 1-3 agree with each other, path 0 disagrees with them wherever it is wrong: 3 of the 6 pairs
    assert relevance["forced_disagreement"] == pytest.approx(0.5 * (1 - relevance["forced"][0]))
    assert relevance["forced_oracle"] == 1.0
    assert not model.training


def test_balanced_specialists_disagree_without_a_spread():
    """Two paths, each right on its own half of the clips: the same accuracy (no spread), full disagreement."""
    from hf_videomoe.moe.statistics import summarize_relevance

    labels = [0, 1, 0, 1]
    relevance = summarize_relevance(labels, learned=labels, random=[0, 0, 1, 1], forced=[[0, 1, 1, 0], [1, 0, 0, 1]])
    assert relevance["forced"] == [0.5, 0.5] and relevance["forced_spread"] == 0.0
    assert relevance["forced_disagreement"] == 1.0 and relevance["forced_oracle"] == 1.0


def test_random_routing_is_seeded_and_random(model_with_a_bad_router):
    model, x, _ = model_with_a_bad_router()
    with record_routing(model) as passes:
        with random_routing(model, seed=3):
            model(pixel_values=x)
        with random_routing(model, seed=3):
            model(pixel_values=x)
        with random_routing(model, seed=4):
            model(pixel_values=x)
        model(pixel_values=x)
    first, again, other, learned = (p[0].top_k_index.flatten() for p in passes)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert set(first.tolist()) == {0, 1, 2, 3} and set(learned.tolist()) == {0}
    # Model-level routing: the random path is shared by every layer.
    assert all(torch.equal(d.top_k_index, passes[0][0].top_k_index) for d in passes[0])


def test_override_replays_recorded_routing(model_with_a_bad_router):
    model, x, _ = model_with_a_bad_router()
    with force_experts(model, 2), record_routing(model) as passes:
        forced = predictions(model, x)
    with override_routing(model, passes[0]):
        replayed = predictions(model, x)
    assert torch.equal(forced, replayed)
    with pytest.raises(ValueError, match="decisions for 2 MoE layers"):
        with override_routing(model, passes[0][:1]):
            pass
    with pytest.raises(ValueError, match="does not match"), override_routing(model, passes[0]):
        model(pixel_values=x[:3])


def test_frozen_routing_controls(model_with_a_bad_router):
    model, x, _ = model_with_a_bad_router()
    same = frozen_routing_predictions(model, x, x)
    clean = predictions(model, x).tolist()
    assert same["adv_input_clean_routing"] == clean and same["clean_input_adv_routing"] == clean
    # A "perturbation" that only changes the routing: the clean clips replayed with another clip's routing.
    other = clips(seed=9)
    with force_experts(model, 1):
        forced_pred = predictions(model, x).tolist()
    with force_experts(model, 1), record_routing(model) as passes:
        model(pixel_values=other)
    with override_routing(model, passes[0]):
        assert predictions(model, x).tolist() == forced_pred


def test_drop_upcycling_reinitialises_a_different_fraction_per_expert(tiny_dense_model):
    dense = tiny_dense_model()
    moe = VideoMAEMoeForVideoClassification.from_dense(dense, expert_init="drop_upcycling", expert_init_ratio=0.25)
    up_dense = dense.videomae.encoder.layer[0].intermediate.dense.weight
    experts = moe_blocks(moe)[0].experts
    changed_sets = []
    for e in range(4):
        changed = (experts.up_proj[e] != up_dense).any(dim=1)
        assert int(changed.sum()) == 16  # 25 % of 64 neurons
        unchanged_cols = ~changed
        torch.testing.assert_close(
            experts.down_proj[e][:, unchanged_cols],
            dense.videomae.encoder.layer[0].output.dense.weight[:, unchanged_cols],
        )
        changed_sets.append(tuple(changed.nonzero().flatten().tolist()))
    assert len(set(changed_sets)) == 4
    again = VideoMAEMoeForVideoClassification.from_dense(dense, expert_init="drop_upcycling", expert_init_ratio=0.25)
    torch.testing.assert_close(moe_blocks(again)[0].experts.up_proj, experts.up_proj, rtol=0, atol=0)
    # The function changed, so random routing now differs from learned routing.
    x = clips()
    assert not torch.equal(moe(pixel_values=x).logits, dense(pixel_values=x).logits)


@pytest.mark.parametrize("gate", ["straight_through", "switch", "renormalize"])
@pytest.mark.parametrize("granularity", ["token", "model"])
def test_copy_upcycling_is_exact_under_every_gate(gate, granularity, tiny_dense_model):
    dense = tiny_dense_model()
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense, router_gate=gate, router_granularity=granularity, image_mean=[0.0] * 3, image_std=[1.0] * 3
    )
    x = clips(8)
    torch.testing.assert_close(moe(pixel_values=x).logits, dense(pixel_values=x).logits, rtol=0, atol=0)


def test_noise_and_bad_expert_init_values(tiny_dense_model):
    block = moe_blocks(VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model()))[0]
    before = block.experts.up_proj.detach().clone()
    diversify_experts(block, "noise", ratio=0.1, seed=0)
    delta = block.experts.up_proj - before
    assert all(delta[e].abs().sum() > 0 for e in range(4)) and not torch.equal(delta[0], delta[1])
    assert delta.std() < 0.2 * before.std()
    with pytest.raises(ValueError, match="expert_init"):
        VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), expert_init="random")
    with pytest.raises(ValueError, match="expert_init_ratio"):
        VideoMAEMoeForVideoClassification.from_dense(
            tiny_dense_model(), expert_init="drop_upcycling", expert_init_ratio=1.5
        )


def test_evaluator_reports_relevance_and_flags(tiny_dense_model, model_with_a_bad_router):
    model, x, labels = model_with_a_bad_router()
    data = [{"pixel_values": x[i], "labels": int(labels[i])} for i in range(16)]
    kwargs = dict(
        attacks=["pgd", "tlga-r"],
        eps=4 / 255,
        steps=2,
        batch_size=8,
        check_gradients=False,
        check_determinism=False,
        compute_cost=False,
        progress=False,
    )
    report = evaluate_robustness(model, data, **kwargs)
    relevance = report.routing_relevance
    assert relevance["learned"] == report.clean_accuracy
    assert relevance["forced"][1] == 1.0 and relevance["random"] > relevance["learned"]
    assert "routing_worse_than_random" in report.flag_names
    assert set(report.frozen_routing) == {"pgd", "tlga-r"}
    for controls in report.frozen_routing.values():
        assert set(controls) == {"adv_input_clean_routing", "clean_input_adv_routing"}
        assert all(0.0 <= v <= report.clean_accuracy for v in controls.values())
    markdown = report.to_markdown()
    assert "### Routing relevance" in markdown and "Frozen-routing controls" in markdown
    assert type(report).from_json(report.to_json()).routing_relevance == relevance

    upcycled = VideoMAEMoeForVideoClassification.from_dense(
        tiny_dense_model(), image_mean=[0.0] * 3, image_std=[1.0] * 3
    )
    labels = predictions(upcycled, x[:16])
    data = [{"pixel_values": x[i], "labels": int(labels[i])} for i in range(16)]
    report = evaluate_robustness(upcycled, data, **kwargs)
    assert "routing_irrelevant" in report.flag_names and "routing_worse_than_random" not in report.flag_names


def test_expert_targets_are_the_model_level_path(tiny_moe_model):
    """With model-level routing, TLA-E's clean top-1 expert, TLGA-R's weakest expert and J-TLAT's top-2 experts read the
    one per-clip decision: the expert the model actually routes each clip through is the attacked path."""
    from hf_videomoe.attacks import build_attack
    from hf_videomoe.attacks.objectives import dominant_expert, weakest_expert
    from hf_videomoe.moe import clip_router_probabilities

    model = tiny_moe_model(router_granularity="model").eval()
    with torch.no_grad():
        moe_blocks(model)[0].router.weight.mul_(50)  # decisive, input-dependent routing
    x = clips(16)
    with record_routing(model) as passes, torch.no_grad():
        out = model(pixel_values=x)
    path = passes[0][0].top_k_index[:, 0, 0]
    assert len(set(path.tolist())) > 1
    assert torch.equal(dominant_expert(out.router_logits), path)
    probs = out.router_logits[0][:, 0].softmax(-1)
    torch.testing.assert_close(clip_router_probabilities(out.router_logits), probs)
    assert torch.equal(weakest_expert(out.router_logits), probs.argmin(-1))
    batch = {"pixel_values": x, "labels": out.logits.argmax(-1)}
    adv = build_attack("tla-e", eps=4 / 255, steps=2, seed=0)(model, batch)["pixel_values"]
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6


def test_spherical_kmeans_recovers_separated_directions():
    from hf_videomoe.moe.upcycling import _spherical_kmeans

    generator = torch.Generator().manual_seed(0)
    axes = torch.eye(8)[:4]
    truth = torch.arange(200) % 4
    points = torch.nn.functional.normalize(axes[truth] + 0.1 * torch.randn(200, 8, generator=generator), dim=1)
    centroids = _spherical_kmeans(points, 4, 50, torch.Generator().manual_seed(1))
    assignment = (points @ centroids.T).argmax(1)
    for k in range(4):  # every true cluster lands in exactly one k-means cluster, and the clusters are distinct
        assert assignment[truth == k].unique().numel() == 1
    assert assignment.unique().numel() == 4


def test_cluster_routers_separates_two_kinds_of_clip(tiny_dense_model):
    dense = tiny_dense_model()
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense, num_experts=2, num_experts_per_tok=1, router_granularity="model"
    ).train()
    generator = torch.Generator().manual_seed(0)
    red, blue = torch.full((16, 4, 3, 16, 16), 0.1), torch.full((16, 4, 3, 16, 16), 0.1)
    red[:, :, 0], blue[:, :, 2] = 0.9, 0.9
    calibration = torch.cat([red, blue]) + 0.05 * torch.rand(32, 4, 3, 16, 16, generator=generator)
    experts_before = [p.detach().clone() for n, p in moe.named_parameters() if "router" not in n]
    fractions = cluster_routers(moe, calibration, seed=0)
    assert moe.training  # mode restored
    assert all(
        torch.equal(a, b) for a, b in zip(experts_before, [p for n, p in moe.named_parameters() if "router" not in n])
    )
    assert fractions == [[0.5, 0.5]]
    with record_routing(moe.eval()) as decisions:
        moe(pixel_values=calibration)
    chosen = decisions[0][0].top_k_index.reshape(-1)
    assert chosen[:16].unique().numel() == 1 and chosen[16:].unique().numel() == 1 and chosen[0] != chosen[16]
    # same seed, same routers
    again = VideoMAEMoeForVideoClassification.from_dense(
        dense, num_experts=2, num_experts_per_tok=1, router_granularity="model"
    )
    cluster_routers(again, calibration, seed=0)
    assert torch.equal(moe_blocks(again)[0].router.weight, moe_blocks(moe)[0].router.weight)


def test_cluster_routers_sets_every_router_and_checks_input(tiny_dense_model):
    moe = VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), num_experts=4, num_experts_per_tok=1)
    before = [block.router.weight.detach().clone() for block in moe_blocks(moe)]
    fractions = cluster_routers(moe, clips(8), seed=0)
    assert len(fractions) == 2 and all(abs(sum(f) - 1) < 1e-6 for f in fractions)
    assert all(not torch.equal(b, block.router.weight) for b, block in zip(before, moe_blocks(moe)))
    with pytest.raises(ValueError, match="num_clips, num_frames"):
        cluster_routers(moe, clips(2)[0])
    with pytest.raises(ValueError, match="at least num_experts"):
        cluster_routers(
            VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), num_experts=4, router_granularity="model"),
            clips(2),
        )
    with pytest.raises(ValueError, match="logit_scale"):
        cluster_routers(moe, clips(8), logit_scale=0.0)
    with pytest.raises(ValueError, match="MoE model"):
        cluster_routers(tiny_dense_model(), clips(8))
    with pytest.raises(ValueError, match="batch_size"):
        cluster_routers(moe, clips(8), batch_size=0)
    with pytest.raises(ValueError, match="nearly"):  # identical clips: no clusters to find
        cluster_routers(
            VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), num_experts=4, router_granularity="model"),
            clips(1).expand(8, -1, -1, -1, -1).clone(),
        )
    single = VideoMAEMoeForVideoClassification.from_dense(tiny_dense_model(), num_experts=1)
    weights = [block.router.weight.detach().clone() for block in moe_blocks(single)]
    assert cluster_routers(single, clips(4)) == [[1.0], [1.0]]
    assert all(torch.equal(w, block.router.weight) for w, block in zip(weights, moe_blocks(single)))


def test_spherical_kmeans_keeps_every_cluster_alive():
    from hf_videomoe.moe.upcycling import _spherical_kmeans

    # Four copies of one direction and one outlier, five clusters wanted: seeds never repeat a point, and no cluster
    # ends empty (each holds a distinct point).
    points = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] + [[1.0, 0.01]] * 3), dim=1)
    centroids = _spherical_kmeans(points, 3, 20, torch.Generator().manual_seed(0))
    assignment = (points @ centroids.T).argmax(1)
    assert torch.isfinite(centroids).all() and assignment.unique().numel() == 3
