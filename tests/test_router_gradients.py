"""Router gradients checked against their analytic values, and the float32 router checked exactly.

The gates (``straight_through``, ``switch``, ``renormalize``) share their forward value, so only the *value* of the
router gradient tells them apart: a sign flip in the straight-through gate, a dropped ``.detach()`` or the Switch
formula in its place all keep the forward output and a non-zero gradient. Here every gradient is compared with the
formula written out by hand (float64, no autograd) on a block whose numbers are chosen by hand:

with router logits ``z = W h``, probabilities ``p = softmax(z)``, selected set ``K`` (top-k of ``p``), mass
``m = sum_K p`` and a loss whose derivative with respect to the gate value of expert ``i`` is ``s_i``
(``dL/dz_j = sum_k dL/dp_k * p_k (delta_kj - p_j)``):

* straight-through: ``dL/dp_k = s_k``                         (gate ``p_k - sg(p_k) + sg(p_k / m)``);
* Switch:           ``dL/dp_k = s_k / m``                     (gate ``p_k / sg(m)``);
* renormalise:      ``dL/dp_k = (s_k - sum_K s_i p_i / m) / m`` (gate ``p_k / m``; 0 at top-1).
"""

import pytest
import torch

from hf_videomoe import VideoMAEMoeConfig
from hf_videomoe.moe import moe_blocks, record_routing
from hf_videomoe.moe.modeling_moe import SparseMoeBlock

GATES = ("straight_through", "switch", "renormalize")

# Hand-chosen numbers: 4 experts, hidden size 4, three tokens. Top-1 / top-2 are unambiguous for every token
# (probabilities well apart) and no probability is close to 1, so every gate formula gives a distinct gradient.
ROUTER_W = torch.tensor(
    [[0.9, -0.4, 0.2, 0.0], [-0.3, 0.8, 0.1, -0.5], [0.4, 0.3, -0.7, 0.6], [-0.6, -0.2, 0.5, 0.3]], dtype=torch.float64
)
TOKENS = torch.tensor([[1.0, 0.2, -0.3, 0.5], [-0.4, 1.1, 0.6, -0.2], [0.3, -0.5, 0.9, 1.2]], dtype=torch.float64)
# Experts compute a constant (up_proj = 0 and GELU(0) = 0): expert i of layer l outputs EXPERT_OUT[l][i].
EXPERT_OUT = torch.tensor(
    [
        [[0.5, -1.0, 0.25, 2.0], [-1.5, 0.5, 1.0, 0.0], [0.75, 0.25, -0.5, -1.0], [2.0, 1.0, 0.5, -0.25]],
        [[-0.5, 0.5, 1.5, 0.0], [1.0, -2.0, 0.0, 0.5], [0.0, 1.0, -1.0, 1.5], [-1.0, -0.5, 2.0, 1.0]],
    ],
    dtype=torch.float64,
)
LOSS_DIRECTION = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)  # L = sum_tokens c . y


def _block_config(top_k: int, gate: str) -> VideoMAEMoeConfig:
    return VideoMAEMoeConfig(
        image_size=16,
        patch_size=8,
        num_frames=4,
        tubelet_size=2,
        hidden_size=4,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=2,
        num_labels=2,
        num_experts=4,
        num_experts_per_tok=top_k,
        router_gate=gate,
    )


def _hand_built_block(layer: int, top_k: int, gate: str, owns_router: bool = True) -> SparseMoeBlock:
    block = SparseMoeBlock(_block_config(top_k, gate), owns_router=owns_router).train()
    with torch.no_grad():
        if owns_router:
            block.router.weight.copy_(ROUTER_W.float())
        block.experts.up_proj.zero_()
        block.experts.up_proj_bias.zero_()
        block.experts.down_proj.zero_()
        block.experts.down_proj_bias.copy_(EXPERT_OUT[layer].float())
    return block


def analytic_logit_gradient(z: torch.Tensor, s: torch.Tensor, top_k: int, gate: str) -> torch.Tensor:
    """``dL/dz`` for logits ``z`` (``(..., E)``) and per-expert loss sensitivities ``s`` (``(..., E)``), float64."""
    z, s = z.double(), s.double()
    p = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    p = p / p.sum(dim=-1, keepdim=True)
    selected = torch.zeros_like(p, dtype=torch.bool).scatter(-1, p.topk(top_k, dim=-1).indices, True)
    m = (p * selected).sum(dim=-1, keepdim=True)
    if gate == "straight_through":
        dp = s
    elif gate == "switch":
        dp = s / m
    else:
        mean_s = (s * p * selected).sum(dim=-1, keepdim=True) / m
        dp = (s - mean_s) / m
    dp = dp * selected
    # softmax Jacobian: dL/dz_j = sum_k dp_k p_k (delta_kj - p_j) = p_j (dp_j - sum_k dp_k p_k)
    return p * (dp - (dp * p).sum(dim=-1, keepdim=True))


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("gate", GATES)
def test_token_router_gradient_matches_the_gate_formula(gate, top_k):
    block = _hand_built_block(0, top_k, gate)
    h = TOKENS.float()[None]  # (batch 1, 3 tokens, hidden 4)
    out, _ = block(h)
    loss = (out.double() * LOSS_DIRECTION).sum()
    loss.backward()

    # Expected: every token sees s_i = c . EXPERT_OUT[0][i]; dL/dW = sum_t dL/dz_t (x) h_t.
    z = TOKENS @ ROUTER_W.T
    s = (EXPERT_OUT[0] @ LOSS_DIRECTION).expand_as(z)
    expected = analytic_logit_gradient(z, s, top_k, gate).T @ TOKENS
    if gate == "renormalize" and top_k == 1:
        assert expected.abs().max() == 0  # the formula itself says: no gradient at top-1
        assert block_grad_is_zero(block)
        return
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(block.router.weight.grad.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("gate", GATES)
def test_gate_formulas_differ_on_the_hand_built_block(gate, top_k):
    """The hand-built numbers separate the gates: each formula differs from the other two (so the test above cannot
    pass with one gate's formula in another's place), except renormalise at top-1, which is zero."""
    z = TOKENS @ ROUTER_W.T
    s = (EXPERT_OUT[0] @ LOSS_DIRECTION).expand_as(z)
    mine = analytic_logit_gradient(z, s, top_k, gate)
    for other in GATES:
        if other != gate:
            assert (mine - analytic_logit_gradient(z, s, top_k, other)).abs().max() > 1e-3, (gate, other)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("gate", GATES)
def test_model_level_router_gradient_sums_over_the_layers_that_follow_it(gate, top_k):
    """Model-level routing on a hand-built pair of blocks: the first block's router decides once per clip (one routing
    unit, the mean token), the second block follows that decision. The router's gradient is the gate formula with
    ``s_i = sum over tokens and both layers of c . E_i`` applied to the mean token."""
    first = _hand_built_block(0, top_k, gate)
    second = _hand_built_block(1, top_k, gate, owns_router=False)
    h = TOKENS.float()[None]
    unit_index = torch.zeros(TOKENS.shape[0], dtype=torch.long)
    out0, decision = first(h, unit_index=unit_index)
    out1, shared = second(h, unit_index=unit_index, shared_routing=decision)
    assert shared is decision
    loss = ((out0 + out1).double() * LOSS_DIRECTION).sum()
    loss.backward()

    mean_token = TOKENS.mean(dim=0, keepdim=True)
    z = mean_token @ ROUTER_W.T
    s = TOKENS.shape[0] * ((EXPERT_OUT[0] + EXPERT_OUT[1]) @ LOSS_DIRECTION)[None]
    expected = analytic_logit_gradient(z, s, top_k, gate).T @ mean_token
    if gate == "renormalize" and top_k == 1:
        assert block_grad_is_zero(first)
        return
    torch.testing.assert_close(first.router.weight.grad.double(), expected, rtol=1e-5, atol=1e-7)
    # The second layer's share is not negligible: without it the gradient would be visibly different.
    first_only = analytic_logit_gradient(z, TOKENS.shape[0] * (EXPERT_OUT[0] @ LOSS_DIRECTION)[None], top_k, gate)
    assert (first_only.T @ mean_token - expected).abs().max() > 1e-2


def block_grad_is_zero(block) -> bool:
    grad = block.router.weight.grad
    return grad is None or grad.abs().max() < 1e-5  # p / p = 1 up to float32 round-off; the other gates give ~1


# ---------------------------------------------------------------------------------------------- whole models


def _tiny(make_moe_model, **overrides):
    return make_moe_model(num_experts=4, router_aux_loss_coef=0.0, router_z_loss_coef=0.0, **overrides).train()


def _clip(batch=3, seed=1):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("granularity", ["model", "frame"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("gate", GATES)
def test_model_router_gradients_follow_the_gate_formula(gate, top_k, granularity, make_moe_model):
    """On a whole model, the task loss's gradient at each router equals the gate formula applied to the gradient the
    loss sends to the gate *values* (measured by replaying the same routing with leaf gate values), times the
    router's input. With model-level routing the one router collects the gate gradients of every MoE layer."""
    model = _tiny(make_moe_model, num_experts_per_tok=top_k, router_granularity=granularity, router_gate=gate)
    x, labels = _clip(), torch.tensor([0, 5, 3])
    blocks = moe_blocks(model)
    captured = {}
    hooks = [
        b.router.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, (args[0], out)))
        for i, b in enumerate(blocks)
        if b.router is not None
    ]
    with record_routing(model) as passes:
        loss = torch.nn.functional.cross_entropy(model(x).logits, labels)
    for hook in hooks:
        hook.remove()
    routers = [i for i, b in enumerate(blocks) if b.router is not None]
    assert len(routers) == (1 if granularity == "model" else len(blocks))
    grads = torch.autograd.grad(loss, [blocks[i].router.weight for i in routers], allow_unused=True)

    # Replay the same forward with the gate values of one router's decision as a leaf, every other router live (so
    # paths through later routers stay in): under model-level routing that decision is shared by every MoE layer.
    decisions = passes[0]
    for layer, grad in zip(routers, grads):
        leaf = decisions[layer].top_k_weights.clone().requires_grad_(True)
        followers = range(len(blocks)) if granularity == "model" else [layer]
        for i in followers:
            blocks[i].routing_override = (decisions[layer].top_k_index, leaf)
        try:
            replay_loss = torch.nn.functional.cross_entropy(model(x).logits, labels)
        finally:
            for i in followers:
                blocks[i].routing_override = None
        torch.testing.assert_close(replay_loss, loss, rtol=0, atol=0)  # same forward, bit for bit
        (d_gate,) = torch.autograd.grad(replay_loss, leaf)  # (B, U, k), aligned with top_k_index

        unit_states, z = captured[layer]
        assert z.dtype == torch.float32
        s = torch.zeros(*z.shape, dtype=torch.float64).scatter_add(-1, decisions[layer].top_k_index, d_gate.double())
        expected = torch.einsum(
            "bue,buh->eh", analytic_logit_gradient(z.detach(), s, top_k, gate), unit_states.detach().double()
        )
        if gate == "renormalize" and top_k == 1:
            assert grad is None or grad.abs().max() < 1e-6
            continue
        assert expected.abs().max() > 1e-6
        torch.testing.assert_close(grad.double(), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


# ------------------------------------------------------------------------------------------- float32 routers


@pytest.mark.parametrize("mode", ["autocast-bf16", "autocast-fp16", "bf16-weights"])
def test_router_logits_are_an_exact_float32_product(mode, make_moe_model):
    """Whatever precision the rest of the model runs in, each router's logits equal the float32 (here: float64)
    product of its input and weights to float32 round-off, far below the ~1e-3 relative error of a bf16 matmul."""
    model = _tiny(make_moe_model, router_granularity="token").eval()
    if mode == "bf16-weights":
        model = model.to(torch.bfloat16)
    captured = []
    hooks = [
        b.router.register_forward_hook(lambda mod, args, out: captured.append((mod, args[0], out)))
        for b in moe_blocks(model)
    ]
    x = _clip(batch=2)
    with torch.no_grad():
        if mode.startswith("autocast"):
            with torch.autocast("cpu", dtype=torch.bfloat16 if mode == "autocast-bf16" else torch.float16):
                out = model(x)
        else:
            out = model(x.to(torch.bfloat16))
    for hook in hooks:
        hook.remove()
    assert out.logits.dtype != torch.float32  # the rest of the model did run in half precision
    assert len(captured) == 2
    for (router, unit_states, logits), returned in zip(captured, out.router_logits):
        assert logits.dtype == torch.float32 and returned.dtype == torch.float32
        torch.testing.assert_close(returned, logits, rtol=0, atol=0)
        reference = unit_states.double() @ router.weight.double().T
        scale = reference.abs().max().item()
        assert scale > 0.05
        torch.testing.assert_close(logits.double(), reference, rtol=0, atol=2e-6 * scale)
