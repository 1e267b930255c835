"""The per-batch computation of `evaluate_robustness`."""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sources import Batch
from ..moe import (
    expert_load,
    frozen_routing_predictions,
    is_moe_model,
    logits_of,
    moe_blocks,
    record_routing,
    relevance_predictions,
    routing_change_per_layer,
)
from .attack_specs import AttackSpec, spec_eps

__all__ = ["BatchEvaluator", "EvaluationOptions", "derive_seed", "looks_like_probabilities"]


def looks_like_probabilities(logits: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether a batch of classifier outputs lies in [0, 1] and sums to 1 per row: probabilities, not logits."""
    if logits.numel() == 0 or logits.shape[-1] < 2:
        return False
    values = logits.detach().float()
    in_range = bool(((values >= -atol) & (values <= 1 + atol)).all())
    return in_range and bool(((values.sum(dim=-1) - 1).abs() <= atol).all())


def derive_seed(seed: int, batch_index: int, tag: str) -> int:
    return (int(seed) * 1_000_003 + batch_index * 7_919 + zlib.crc32(tag.encode())) % (2**63 - 1)


def accepts_kwarg(module: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def first_non_finite_parameter(model: nn.Module) -> str | None:
    """Name of the first parameter or buffer holding NaN / inf (``None`` if all are finite)."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def check_finite_logits(model: nn.Module, logits: torch.Tensor, indices: list[int]) -> None:
    """No accuracy from the argmax of NaN: non-finite clean logits stop the evaluation, naming the model and the first
    parameter holding NaN / inf."""
    finite = torch.isfinite(logits).all(dim=-1).cpu()
    if bool(finite.all()):
        return
    bad = [index for index, ok in zip(indices, finite.tolist()) if not ok]
    config = getattr(model, "config", None)
    where = getattr(config, "_name_or_path", "") or ""
    name = type(model).__name__ + (f" ({where})" if where else "")
    parameter = first_non_finite_parameter(model)
    cause = (
        f"its parameter {parameter!r} holds NaN / inf (a corrupt or diverged checkpoint)"
        if parameter
        else "every parameter is finite, so the forward pass overflows"
    )
    raise ValueError(
        f"model {name} returned non-finite logits (NaN / inf) on clean inputs (dataset indices {bad[:5]}); expected "
        f"finite logits: {cause}. No accuracy is computed from NaN."
    )


@dataclass(frozen=True)
class EvaluationOptions:
    """What every batch computes besides its clean and adversarial predictions (built by `evaluate_robustness`)."""

    seed: int
    eps: float
    diagnostics: bool
    check_determinism: bool
    check_gradients: bool
    eps_sweep: list[float] | None
    sweep_attacks: list[str]
    steps_check: dict[str, int] | None
    steps_check_samples: int
    return_per_sample: bool
    #: AutoAttack's order of work: each attack runs only on the clips that every earlier attack (and the clean pass)
    #: left correctly classified; the others get prediction -1 for it.
    cascade: bool = False
    #: In cascade mode, attacks that still run on every clip (with all their diagnostics) before the cascade starts.
    exact_attacks: tuple[str, ...] = ()
    #: budget key → ``{"norm", "eps", "attacks"}`` (`budget_plan`): a worst case is taken per budget, never across two.
    budgets: dict[str, dict[str, Any]] | None = None
    #: the key of the headline budget (``worst_case_accuracy``).
    headline_budget: str | None = None


class BatchEvaluator:
    """Runs one global batch: clean pass, every attack, routing diagnostics and controls, sweep and steps check; the
    result is a JSON-serialisable record (what the resumable state stores and `aggregate` reads)."""

    def __init__(self, model: nn.Module, specs: list[AttackSpec], options: EvaluationOptions):
        self.model = model
        self.specs = specs
        self.o = options
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.moe = is_moe_model(model)
        self.diagnostics = self.moe and options.diagnostics
        blocks = moe_blocks(model) if self.moe else []
        self.top_ks = [int(getattr(b, "top_k", 1)) for b in blocks]
        self.num_experts = [int(getattr(b, "num_experts", 0)) for b in blocks]
        self.forward_kwargs = (
            {"output_router_logits": True} if self.moe and accepts_kwarg(model, "output_router_logits") else {}
        )

    # -- model calls ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values):
        with torch.no_grad():
            out = self.model(pixel_values=pixel_values, **self.forward_kwargs)
        logits = logits_of(out)
        router_logits = getattr(out, "router_logits", None) if self.diagnostics else None
        return logits.float(), router_logits

    def recorded_forward(self, pixel_values):
        """`forward`, plus the routing decisions of that pass when routing diagnostics run (else ``None``): the
        frozen-routing controls replay them instead of forwarding the same clips again."""
        if not self.diagnostics:
            return (*self.forward(pixel_values), None)
        with record_routing(self.model) as passes:
            logits, router_logits = self.forward(pixel_values)
        return logits, router_logits, passes[0]

    def attack(self, attack, x, y, batch_index, tag):
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.o.seed, batch_index, tag))
            if callable(getattr(attack, "perturb", None)):
                adv = attack.perturb(self.model, x, y)
            else:
                adv = attack(self.model, {"pixel_values": x, "labels": y})["pixel_values"]
        return adv.detach()

    def input_gradient_norms(self, x, y) -> torch.Tensor:
        x_req = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(logits_of(self.model(pixel_values=x_req)).float(), y, reduction="sum")
            if not loss.requires_grad:
                return torch.zeros(len(y))
            (grad,) = torch.autograd.grad(loss, x_req, allow_unused=True)
        if grad is None:
            return torch.zeros(len(y))
        return grad.detach().flatten(1).norm(dim=1).float().cpu()

    # -- routing statistics ---------------------------------------------------------------------------------------
    def _top_ks(self, router_logits):
        if len(self.top_ks) == len(router_logits):
            return self.top_ks
        return [int(getattr(self.model.config, "num_experts_per_tok", 1))] * len(router_logits)

    def usage_counts(self, router_logits) -> list[list[int]]:
        out = []
        for logits, k in zip(router_logits, self._top_ks(router_logits)):
            out.append(expert_load(logits, k).cpu().tolist())
        return out

    def routing_change(self, clean_rl, adv_rl) -> torch.Tensor:
        """(B, layers): 1 - mean IoU over units of the top-k expert sets."""
        return routing_change_per_layer(clean_rl, adv_rl, self._top_ks(clean_rl)).cpu()

    @staticmethod
    def router_lipschitz(clean_rl, adv_rl, x, adv) -> list[float | None]:
        """Per-sample Lips-R (``hf_videomoe.attacks.objectives.router_lipschitz_ratio``); ``None`` for samples the
        attack left unchanged (no information on the ratio; left out of the mean, as in ``diagnostics``)."""
        from ..attacks.terms import per_sample_mse, router_lipschitz_ratio

        ratio = router_lipschitz_ratio(clean_rl, adv_rl, x, adv).cpu().tolist()
        moved = (per_sample_mse(x, adv) > 0).cpu().tolist()
        return [r if m else None for r, m in zip(ratio, moved)]

    def full_attack(self, spec: AttackSpec, x, y, batch_index: int, clean_rl, clean_routing) -> dict[str, Any]:
        """Run ``spec`` on every clip of the batch: predictions, perturbation energy and, for MoE models, the routing
        diagnostics and frozen-routing controls."""
        adv = self.attack(spec.attack, x, y, batch_index, spec.label)
        adv_logits, adv_rl, adv_routing = self.recorded_forward(adv)
        delta = adv.float() - x.float()
        entry: dict[str, Any] = {
            "pred": adv_logits.argmax(-1).tolist(),
            "energy_sum": delta.pow(2).sum(dim=(2, 3, 4)).double().sum(dim=0).tolist(),
            "linf": float(delta.abs().max()) if delta.numel() else 0.0,
        }
        if self.diagnostics and clean_rl and adv_rl:
            entry["routing_change"] = self.routing_change(clean_rl, adv_rl).tolist()
            entry["router_lipschitz"] = self.router_lipschitz(clean_rl, adv_rl, x, adv)
            entry["usage"] = self.usage_counts(adv_rl)
            entry["frozen_routing"] = frozen_routing_predictions(self.model, x, adv, clean_routing, adv_routing)
        return entry

    def cascade_attack(self, spec: AttackSpec, x, y, batch_index: int, standing: torch.Tensor) -> dict[str, Any]:
        """Run ``spec`` on the clips still ``standing`` (updated in place: the ones it fools fall). Every attack of
        this library draws its randomness per clip from the clip itself, so a clip gets the same adversarial example
        here as in the full batch and the cascade's worst case equals the full mode's."""
        pred = torch.full((len(y),), -1, dtype=torch.long)
        index = standing.nonzero().squeeze(1)
        entry: dict[str, Any] = {"attacked": int(index.numel()), "linf": 0.0}
        energy = torch.zeros(x.shape[1], dtype=torch.float64)
        if index.numel():
            x_sub, y_sub = x[index.to(x.device)], y[index.to(y.device)]
            adv = self.attack(spec.attack, x_sub, y_sub, batch_index, spec.label)
            adv_pred = self.forward(adv)[0].argmax(-1).cpu()
            pred[index] = adv_pred
            standing[index] = adv_pred == y_sub.cpu()
            delta = adv.float() - x_sub.float()
            energy = delta.pow(2).sum(dim=(2, 3, 4)).double().sum(dim=0).cpu()
            entry["linf"] = float(delta.abs().max())
        entry.update(pred=pred.tolist(), energy_sum=energy.tolist())
        return entry

    # -- one batch ------------------------------------------------------------------------------------------------
    def run_batch(self, batch: Batch) -> dict[str, Any]:
        o = self.o
        x = batch.pixel_values.to(self.device)
        y = batch.labels.to(self.device)
        k = batch.index
        record: dict[str, Any] = {"batch": k, "indices": batch.indices, "labels": batch.labels.tolist()}
        logits, clean_rl, clean_routing = self.recorded_forward(x)
        check_finite_logits(self.model, logits, batch.indices)
        record["clean_pred"] = logits.argmax(-1).tolist()
        record["probability_like"] = looks_like_probabilities(logits)
        if o.check_determinism:
            logits2, _ = self.forward(x)
            record["determinism"] = {
                "max_abs_diff": float((logits - logits2).abs().max()) if logits.numel() else 0.0,
                "pred_changed": int((logits.argmax(-1) != logits2.argmax(-1)).sum()),
            }
        if o.check_gradients:
            norms = self.input_gradient_norms(x, y)
            record["grad_norm"] = [n if math.isfinite(n) else None for n in norms.tolist()]
        if self.diagnostics and clean_rl:
            record["clean_usage"] = self.usage_counts(clean_rl)
            record["relevance"] = relevance_predictions(self.model, x, seed=derive_seed(o.seed, k, "relevance"))

        record["attacks"] = {}
        for spec in self.specs:
            if not o.cascade or spec.label in o.exact_attacks:
                record["attacks"][spec.label] = self.full_attack(spec, x, y, k, clean_rl, clean_routing)
        if o.cascade:
            standing = torch.tensor([p == l for p, l in zip(record["clean_pred"], record["labels"])], dtype=torch.bool)
            for entry in record["attacks"].values():
                standing &= torch.tensor([p == l for p, l in zip(entry["pred"], record["labels"])], dtype=torch.bool)
            for spec in self.specs:
                if spec.label not in o.exact_attacks:
                    record["attacks"][spec.label] = self.cascade_attack(spec, x, y, k, standing)

        if o.eps_sweep:
            record["sweep"] = {}
            for spec in self.specs:
                if spec.label not in o.sweep_attacks:
                    continue
                preds = {}
                for eps in o.eps_sweep:
                    if eps == spec_eps(spec):
                        continue  # same attack as the main run: its predictions are reused when aggregating
                    adv = self.attack(spec.variant(eps=eps), x, y, k, f"{spec.label}@eps={eps!r}")
                    preds[repr(eps)] = self.forward(adv)[0].argmax(-1).tolist()
                record["sweep"][spec.label] = preds

        if o.steps_check:
            subset = [i for i, idx in enumerate(batch.indices) if idx < o.steps_check_samples]
            if subset:
                record["steps_check"] = {}
                sel = torch.tensor(subset, device=self.device)
                for label, doubled in o.steps_check.items():
                    spec = next(s for s in self.specs if s.label == label)
                    adv = self.attack(spec.variant(steps=doubled), x[sel], y[sel], k, f"{label}@steps={doubled}")
                    record["steps_check"][label] = {
                        "positions": subset,
                        "pred": self.forward(adv)[0].argmax(-1).tolist(),
                    }
        return record
