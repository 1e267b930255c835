"""The sparse MoE block: expert kernels, router gradients, forced routing, jitter, aux losses, and cost accounting."""

import copy

import pytest
import torch
from torch import nn

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.evaluation import CostReport, count_cost, count_parameters, dense_equivalent_config
from hf_videomoe.moe import (
    force_experts,
    load_balancing_loss,
    moe_blocks,
    naive_experts_forward,
    record_routing,
    router_parameters,
    router_z_loss,
    sharpened_balance_loss,
)

TOKENS = {"videomae": 8, "timesformer": 17}  # tokens per clip of the tiny configs
IMPLEMENTATIONS = ["eager", "batched_mm", "grouped_mm"]


def clip(batch=2, seed=1):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ expert kernels


def test_default_experts_implementation(tmp_path, tiny_videomae_config):
    """Eager (sorted, one matmul pair per expert) is the fastest kernel on CPU; grouped_mm where CUDA exists."""
    expected = "grouped_mm" if torch.cuda.is_available() else "eager"
    model = VideoMAEMoeForVideoClassification(tiny_videomae_config())
    assert model.config._experts_implementation == expected
    model.save_pretrained(tmp_path)
    assert VideoMAEMoeForVideoClassification.from_pretrained(tmp_path).config._experts_implementation == expected
    chosen = VideoMAEMoeForVideoClassification.from_pretrained(tmp_path, experts_implementation="grouped_mm")
    assert chosen.config._experts_implementation == "grouped_mm"


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_experts_kernel_matches_naive_loop(tiny_videomae_config, implementation, top_k):
    torch.manual_seed(0)
    model = VideoMAEMoeForVideoClassification(tiny_videomae_config(num_experts_per_tok=top_k))
    model.set_experts_implementation(implementation)
    assert model.config._experts_implementation == implementation
    experts = moe_blocks(model)[0].experts
    with torch.no_grad():  # distinct experts and non-zero biases
        for param in experts.parameters():
            param.copy_(torch.randn_like(param) * 0.1)

    num_tokens, num_experts = 37, experts.num_experts
    cases = {
        "random": torch.rand(num_tokens, num_experts).argsort(dim=-1)[:, :top_k],
        # experts 2 and 3 receive no token: empty groups must be skipped without breaking the others
        "unbalanced": torch.stack(
            [torch.zeros(num_tokens, dtype=torch.long), torch.ones(num_tokens, dtype=torch.long)], dim=-1
        )[:, :top_k],
    }
    for name, index in cases.items():
        states = torch.randn(num_tokens, experts.hidden_dim)
        weights = torch.rand(num_tokens, top_k) + 0.1
        weights = weights / weights.sum(-1, keepdim=True)
        grad_out = torch.randn(num_tokens, experts.hidden_dim)
        results = []
        for fn in (lambda h, w: experts(h, index, w), lambda h, w: naive_experts_forward(experts, h, index, w)):
            h, w = states.clone().requires_grad_(), weights.clone().requires_grad_()
            experts.zero_grad()
            out = fn(h, w)
            out.backward(grad_out)
            results.append(
                (out.detach(), h.grad, w.grad, experts.up_proj.grad.clone(), experts.down_proj_bias.grad.clone())
            )
        for got, want, what in zip(
            results[0], results[1], ("output", "input grad", "weight grad", "up grad", "bias grad")
        ):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{implementation}/{name}: {what}")


def test_experts_kernels_agree_on_whole_model(make_moe_model):
    model = make_moe_model(num_experts_per_tok=2, router_granularity="token")
    x = clip()
    results = {}
    for implementation in IMPLEMENTATIONS:
        model.set_experts_implementation(implementation)
        pixels = x.clone().requires_grad_()
        out = model(pixels)
        (out.logits.square().sum() + out.aux_loss).backward()
        results[implementation] = (out.logits.detach(), pixels.grad)
    for implementation in ("batched_mm", "grouped_mm"):
        torch.testing.assert_close(results[implementation][0], results["eager"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(results[implementation][1], results["eager"][1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ routing units


def _unit_of_token(model_family, granularity):
    """Expected token -> unit map of the tiny configs (VideoMAE: time-major tubelets; TimeSformer: CLS first, then
    patch-major with the frame index fastest; its CLS token is a unit of its own under frame routing)."""
    if granularity == "clip":
        return [0] * TOKENS[model_family]
    if model_family == "videomae":
        return [j // 4 for j in range(8)]
    return [4] + [j % 4 for j in range(16)]


@pytest.mark.parametrize("granularity", ["frame", "clip"])
def test_units_share_one_decision(model_family, granularity, make_moe_model):
    """The router sees the mean hidden state of each unit, and every token of a unit gets the unit's experts."""
    model = make_moe_model(router_granularity=granularity, num_experts_per_tok=2)
    block = moe_blocks(model)[0]
    captured = {}
    block.register_forward_hook(lambda mod, args, out: captured.update(states=args[0]))
    original = block.experts.forward
    block.experts.forward = lambda h, idx, w: captured.update(index=idx, weights=w) or original(h, idx, w)
    with torch.no_grad():
        out = model(clip())
    units = torch.tensor(_unit_of_token(model_family, granularity))
    states = captured["states"]  # (batch, tokens, hidden)
    means = torch.stack([states[:, units == u].mean(dim=1) for u in range(int(units.max()) + 1)], dim=1)
    torch.testing.assert_close(out.router_logits[0], block.router(means), rtol=1e-5, atol=1e-6)
    index = captured["index"].reshape(2, TOKENS[model_family], 2)
    weights = captured["weights"].reshape(2, TOKENS[model_family], 2)
    top = torch.topk(out.router_logits[0].softmax(-1), 2, dim=-1)
    torch.testing.assert_close(index, top.indices[:, units])
    torch.testing.assert_close(weights, (top.values / top.values.sum(-1, keepdim=True))[:, units])


# ------------------------------------------------------------------------------------------------ router gradients


def _router_grads(model, loss):
    params = list(router_parameters(model))
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_receives_gradients(top_k, make_moe_model):
    model = make_moe_model(num_experts_per_tok=top_k).train()
    x, labels = clip(), torch.tensor([0, 5])
    out = model(x, labels=labels)
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, ce + out.aux_loss)
    assert out.aux_loss > 0

    aux_grads = _router_grads(model, out.aux_loss)
    assert len(aux_grads) == 2 and all(g.abs().sum() > 0 for g in aux_grads)
    out.loss.backward()
    for param in router_parameters(model):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("granularity", ["token", "frame", "clip", "model"])
@pytest.mark.parametrize("gate", ["straight_through", "switch"])
def test_task_loss_alone_reaches_every_router_at_top1(gate, granularity, make_moe_model):
    """With every auxiliary loss off, the cross-entropy of a top-1 model gives every router a non-zero gradient."""
    model = make_moe_model(
        router_gate=gate,
        router_granularity=granularity,
        router_aux_loss_coef=0.0,
        router_z_loss_coef=0.0,
    ).train()
    out = model(clip(), labels=torch.tensor([0, 5]))
    assert out.aux_loss == 0
    grads = _router_grads(model, out.loss)
    assert len(grads) == (1 if granularity == "model" else 2)
    assert all(g.abs().max() > 1e-7 for g in grads)


def test_renormalize_gate_starves_the_router_at_top1(make_moe_model):
    """The legacy gate: top-1 weights are p / p = 1, so the task loss cannot reach the router (up to round-off)."""
    model = make_moe_model(router_gate="renormalize").train()
    out = model(clip(), labels=torch.tensor([0, 5]))
    ce_grads = _router_grads(model, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 5])))
    aux_grads = _router_grads(model, out.aux_loss)
    assert all(g.abs().max() < 1e-6 < 1e-5 < a.abs().max() for g, a in zip(ce_grads, aux_grads))


@pytest.mark.parametrize("top_k", [1, 2])
def test_gates_share_their_forward_value(top_k, make_moe_model):
    """Every gate has the same forward value, bit for bit: only the router's gradient differs."""
    logits = [
        make_moe_model(seed=3, router_gate=gate, num_experts_per_tok=top_k)(clip()).logits
        for gate in ("straight_through", "switch", "renormalize")
    ]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    torch.testing.assert_close(logits[0], logits[2], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_router_logits_stay_float32_under_autocast(dtype, make_moe_model):
    model = make_moe_model(router_granularity="model")
    with torch.autocast("cpu", dtype=dtype):
        out = model(clip())
    assert out.logits.dtype == dtype  # the rest of the model does run in half precision
    assert all(r.dtype == torch.float32 for r in out.router_logits)
    torch.testing.assert_close(out.router_logits[0], model(clip()).router_logits[0], rtol=0.05, atol=0.05)


def test_unknown_gate_is_rejected(make_config):
    with pytest.raises(ValueError, match="router_gate"):
        make_config(router_gate="softmax")


# ------------------------------------------------------------------------------------------------ model-level routing


def test_model_level_routing_is_one_decision_shared_by_all_layers(make_moe_model):
    model = make_moe_model(router_granularity="model", num_experts_per_tok=1)
    blocks = moe_blocks(model)
    assert blocks[0].router is not None and all(b.router is None for b in blocks[1:])
    x = clip(batch=4)
    with record_routing(model) as passes:
        out = model(x)
    (decisions,) = passes
    assert all(tuple(rl.shape) == (4, 1, 4) for rl in out.router_logits)
    for decision in decisions[1:]:
        assert torch.equal(decision.top_k_index, decisions[0].top_k_index)
        assert torch.equal(decision.router_logits, decisions[0].router_logits)
    # Forcing expert i selects the same path in every layer, and the path differs from another one.
    for expert in range(4):
        with force_experts(model, expert), record_routing(model) as forced:
            model(x)
        assert all((d.top_k_index == expert).all() for d in forced[0])
    # The batch does not matter: one clip routed alone gets the same path.
    with record_routing(model) as alone:
        model(x[:1])
    assert torch.equal(alone[0][0].top_k_index, decisions[0].top_k_index[:1])


def test_model_level_routing_saves_and_loads(tmp_path, make_moe_model):
    model = make_moe_model(router_granularity="model")
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(clip()).logits, model(clip()).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ forced routing


def _replicate_expert(model, experts):
    """A copy of ``model`` whose every expert (in MoE layer ``l``) holds the weights of expert ``experts[l]``."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for block, index in zip(moe_blocks(clone), experts):
            for param in block.experts.parameters():
                param.copy_(param[index : index + 1].expand_as(param))
    return clone


def test_force_experts_computes_single_expert(make_moe_model):
    model = make_moe_model(num_experts_per_tok=2)
    with torch.no_grad():  # make the experts differ
        for block in moe_blocks(model):
            for param in block.experts.parameters():
                param.add_(0.05 * torch.randn_like(param))
    x = clip()
    with torch.no_grad():
        baseline = model(x)
        for experts in ([0, 0], [1, 1], [2, 2], [3, 3], [3, 1]):
            arg = experts[0] if experts[0] == experts[1] else experts
            with force_experts(model, arg) as forced_model:
                assert forced_model is model
                forced = model(x)
            reference = _replicate_expert(model, experts)(x)
            torch.testing.assert_close(forced.logits, reference.logits, rtol=0, atol=1e-5)
            # Router logits are still computed while experts are forced (layer 0 sees the same input).
            assert len(forced.router_logits) == 2
            torch.testing.assert_close(forced.router_logits[0], baseline.router_logits[0], rtol=0, atol=0)
            for a, b in zip(forced.router_logits, reference.router_logits):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert all(block.forced_expert is None for block in moe_blocks(model))
        torch.testing.assert_close(model(x).logits, baseline.logits, rtol=0, atol=0)
        assert not torch.allclose(_replicate_expert(model, [0, 0])(x).logits, baseline.logits, atol=1e-6)


def test_force_experts_restores_routing(make_moe_model):
    model = make_moe_model()
    blocks = moe_blocks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with force_experts(model, 2):
            assert [b.forced_expert for b in blocks] == [2, 2]
            raise RuntimeError("boom")
    assert [b.forced_expert for b in blocks] == [None, None]
    with force_experts(model, [0, 1]):
        with force_experts(model, 3):
            assert [b.forced_expert for b in blocks] == [3, 3]
        assert [b.forced_expert for b in blocks] == [0, 1]
    assert [b.forced_expert for b in blocks] == [None, None]


def test_force_experts_rejects_bad_arguments(make_config, make_moe_model, dense_class):
    model = make_moe_model()
    with pytest.raises(ValueError, match="out of range"):
        with force_experts(model, 4):
            pass
    with pytest.raises(ValueError, match="2 MoE layers"):
        with force_experts(model, [0, 1, 2]):
            pass
    dense = dense_class(make_config(dense=True))
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        with force_experts(dense, 0):
            pass
    assert all(b.forced_expert is None for b in moe_blocks(model))


# ---------------------------------------------------------------------------------------------- jitter, aux losses


def test_jitter_only_in_training(make_moe_model):
    model = make_moe_model(router_jitter_noise=0.3)
    x = clip()
    with torch.no_grad():
        a, b = model(x), model(x)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        torch.testing.assert_close(a.router_logits[0], b.router_logits[0], rtol=0, atol=0)
        model.train()
        c, d = model(x), model(x)
    assert not torch.equal(c.router_logits[0], d.router_logits[0])
    assert not torch.equal(c.router_logits[0], a.router_logits[0])
    # Without jitter, training-mode forwards are deterministic too (dropout is 0 in the tiny configs).
    model = make_moe_model().train()
    with torch.no_grad():
        torch.testing.assert_close(model(x).router_logits[0], model(x).router_logits[0], rtol=0, atol=0)


def test_aux_losses():
    uniform = (torch.zeros(2, 8, 4),)
    torch.testing.assert_close(load_balancing_loss(uniform, num_experts=4, top_k=1), torch.tensor(1.0))
    # Everything routed to one expert with certainty costs num_experts.
    collapsed = torch.full((2, 8, 4), -30.0)
    collapsed[..., 0] = 30.0
    torch.testing.assert_close(load_balancing_loss((collapsed,), num_experts=4, top_k=1), torch.tensor(4.0))
    torch.testing.assert_close(router_z_loss(uniform), torch.log(torch.tensor(4.0)) ** 2)


def test_sharpened_balance_loss_sees_collapsed_decisions_behind_flat_probabilities():
    """The Switch loss is ≈ 1 when every unit picks one expert by a small common offset (near-uniform probabilities);
    the sharpened balance term is not — that is the router collapse J-TLAT step 1 must resist."""
    generator = torch.Generator().manual_seed(0)
    offset_collapse = 0.05 * torch.randn(2, 64, 4, generator=generator)
    offset_collapse[..., 0] += 0.3
    assert (offset_collapse.argmax(-1) == 0).float().mean() > 0.95
    switch = load_balancing_loss((offset_collapse,), num_experts=4, top_k=1)
    sharp = sharpened_balance_loss((offset_collapse,), num_experts=4, temperature=0.1)
    # Both are 1 when balanced and 4 when collapsed with certainty; here the Switch loss has barely moved off 1.
    assert switch < 1.25 and sharp > 2.5 and sharp - 1 > 4 * (switch - 1)
    # Balanced confident decisions cost 1, a confident collapse costs num_experts, as for the Switch loss.
    balanced = torch.full((1, 8, 4), -30.0)
    balanced[0, torch.arange(8), torch.arange(8) % 4] = 30.0
    collapsed = torch.full((1, 8, 4), -30.0)
    collapsed[..., 0] = 30.0
    torch.testing.assert_close(sharpened_balance_loss((balanced,), 4), torch.tensor(1.0))
    torch.testing.assert_close(sharpened_balance_loss((collapsed,), 4), torch.tensor(4.0))
    # Averaged over layers; differentiable, and its gradient lowers the dominant expert's logit.
    logits = offset_collapse.clone().requires_grad_(True)
    sharpened_balance_loss((logits, balanced), 4).backward()
    assert logits.grad[..., 0].sum() > 0 > logits.grad[..., 1:].sum()


def test_aux_loss_coefficients(make_moe_model):
    x = clip()
    with torch.no_grad():
        base = make_moe_model(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)(x)
        assert base.aux_loss == 0
        model = make_moe_model(router_aux_loss_coef=0.5, router_z_loss_coef=0.25)
        out = model(x)
    expected = 0.5 * load_balancing_loss(out.router_logits, 4, 1) + 0.25 * router_z_loss(out.router_logits)
    torch.testing.assert_close(out.aux_loss, expected)


# ---------------------------------------------------------------------------------------------------- cost


def _router_flops(num_units_per_layer, num_layers=2, hidden=32, experts=4):
    return num_layers * 2 * num_units_per_layer * hidden * experts


def test_count_cost_moe_against_dense(model_family, make_moe_model, dense_class):
    model = make_moe_model()  # 4 experts, top-1, token routing, default (grouped_mm) kernel
    config = model.config
    narrow = dense_class(dense_equivalent_config(config, match="active"))
    matched = dense_class(dense_equivalent_config(config, match="total"))
    moe_cost, narrow_cost, matched_cost = count_cost(model), count_cost(narrow), count_cost(matched)
    assert isinstance(moe_cost, CostReport) and moe_cost.input_shape == (4, 3, 16, 16)

    # One expert per token: exactly the one-expert-width dense model plus the router's matmul.
    router = _router_flops(TOKENS[model_family])
    assert moe_cost.flops == narrow_cost.flops + router
    assert router < 0.02 * moe_cost.flops
    assert moe_cost.flops < 0.75 * matched_cost.flops
    assert sum(v for k, v in moe_cost.flops_by_module.items() if k.endswith(".mlp.router")) == router

    # Parameters: the MoE has (nearly) the parameter-matched model's total, and the narrow model's active count.
    assert moe_cost.active_parameters < moe_cost.total_parameters
    router_params = sum(p.numel() for p in router_parameters(model))
    assert moe_cost.active_parameters == narrow_cost.total_parameters + router_params
    assert abs(moe_cost.total_parameters - matched_cost.total_parameters) <= router_params + 2 * 3 * 32
    for dense_cost in (narrow_cost, matched_cost):
        assert dense_cost.active_parameters == dense_cost.total_parameters


def test_count_cost_counts_routed_tokens_only(model_family, make_moe_model):
    """Top-2 costs exactly one more expert MLP per token than top-1; frame routing has a smaller router."""
    top1 = count_cost(make_moe_model())
    top2 = count_cost(make_moe_model(num_experts_per_tok=2))
    mlp = 2 * (2 + 2) * TOKENS[model_family] * 32 * 64  # 2 layers x (up + down matmul, 2 FLOPs per MAC), one expert
    assert top2.flops - top1.flops == mlp
    frame = count_cost(make_moe_model(router_granularity="frame"))
    frames = 2 if model_family == "videomae" else 5
    assert top1.flops - frame.flops == _router_flops(TOKENS[model_family]) - _router_flops(frames)


def test_count_cost_restores_model_state(make_moe_model):
    model = make_moe_model().train()
    implementation = model.config._experts_implementation
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cost = count_cost(model, batch_size=3)
    assert model.training and model.config._experts_implementation == implementation
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # FLOPs are per clip and do not depend on the kernel the model uses.
    assert cost.batch_size == 3
    assert cost.flops == count_cost(model).flops
    model.set_experts_implementation("batched_mm")
    assert count_cost(model).flops == cost.flops
    assert model.config._experts_implementation == "batched_mm"
    # grouped_mm is invisible to FlopCounterMode: the experts of a wrapped model are switched to eager as well.
    model.set_experts_implementation("grouped_mm")
    assert count_cost(nn.Sequential(model), input_shape=(4, 3, 16, 16)).flops == cost.flops
    assert model.config._experts_implementation == "grouped_mm"


def test_count_parameters_formula(make_config, make_moe_model, dense_class):
    model = make_moe_model(num_experts=4, num_experts_per_tok=2, moe_layers=[1])
    active, total = count_parameters(model)
    expert = 2 * 32 * 64 + 64 + 32  # up + down weights and biases of one expert
    assert total == sum(p.numel() for p in model.parameters())
    assert total - active == (4 - 2) * expert
    dense = dense_class(make_config(dense=True))
    assert count_parameters(dense)[0] == count_parameters(dense)[1]


def test_count_cost_input_shape(make_moe_model):
    model = make_moe_model()
    assert count_cost(model, input_shape=(2, 4, 3, 16, 16)).batch_size == 2
    with pytest.raises(ValueError, match="frames, channels, height, width"):
        count_cost(model, input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="input_shape"):
        count_cost(nn.Linear(3, 3))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 16 * 16, 8))
    assert count_cost(plain, input_shape=(4, 3, 16, 16)).flops == 2 * 4 * 3 * 16 * 16 * 8


def test_dense_equivalent_config(tiny_videomae_config, tiny_timesformer_config):
    from transformers import TimesformerConfig, VideoMAEConfig

    moe = tiny_videomae_config(num_experts=3)
    active, total = dense_equivalent_config(moe), dense_equivalent_config(moe, match="total")
    assert type(active) is VideoMAEConfig and active.model_type == "videomae"
    assert (active.intermediate_size, total.intermediate_size) == (64, 192)
    assert not hasattr(active, "num_experts") and active.hidden_size == 32 and active.tubelet_size == 2
    tsf = dense_equivalent_config(tiny_timesformer_config(drop_path_rate=0.1, attention_type="joint_space_time"))
    assert type(tsf) is TimesformerConfig and tsf.attention_type == "joint_space_time" and tsf.drop_path_rate == 0.1
    assert dense_equivalent_config(moe, intermediate_size=100).intermediate_size == 100
    with pytest.raises(ValueError, match="match"):
        dense_equivalent_config(moe, match="flops")
    with pytest.raises(TypeError, match="expects a VideoMAE or TimeSformer config, got object"):
        dense_equivalent_config(object())
