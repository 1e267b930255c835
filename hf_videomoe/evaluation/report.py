"""The robustness report: a JSON-serialisable dataclass with Markdown and plot outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formatting import format_eps, format_percent, norm_symbol
from .output_folder import atomic_write_text
from .plots import plot_report
from .report_checks import REPORT_FORMAT_VERSION, migrate_report_dict, validate_report, worst_case_budget

__all__ = ["ReliabilityFlag", "RobustnessReport", "format_eps"]


_percent = format_percent


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


@dataclass
class ReliabilityFlag:
    """A warning that a robustness number may be over-optimistic, with the evidence behind it.

    Attributes:
        name: stable identifier, e.g. ``"gradient_masking"``, ``"non_monotonic_eps"``, ``"non_monotonic_steps"``,
            ``"non_deterministic_forward"``, ``"zero_gradients"``, ``"router_collapse"``.
        message: what the flag means and what to try.
        evidence: the numbers that raised it (JSON-serialisable).
    """

    name: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReliabilityFlag":
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("name"), str)
            or not isinstance(data.get("message"), str)
            or not isinstance(data.get("evidence") or {}, dict)
        ):
            raise ValueError(
                f"a reliability flag must be an object with string 'name' and 'message' (and a dict "
                f"'evidence'), got {data!r}"
            )
        return cls(name=data["name"], message=data["message"], evidence=dict(data.get("evidence") or {}))


@dataclass
class RobustnessReport:
    """Result of [`evaluate_robustness`]: clean, per-attack and worst-case accuracy, routing diagnostics, cost.

    Accuracy conventions: a sample is *robust to an attack* when it is classified correctly both clean and under that
    attack, so every robust accuracy is at most the clean accuracy. ``robust_accuracy[a]`` is the fraction of all
    evaluated samples robust to attack ``a``; ``worst_case_accuracy`` is the fraction robust to *every* attack (the
    per-sample AND, AutoAttack-style), so it is at most every single-attack accuracy.

    Attributes:
        clean_accuracy: accuracy on unperturbed inputs.
        robust_accuracy: attack name → robust accuracy at ``eps``.
        worst_case_accuracy: per-sample worst case over all attacks (the headline number).
        routing_change: attack name → 1 − mean IoU of the selected-expert sets, clean vs adversarial (all MoE layers).
            Empty for dense models.
        routing_change_per_layer: attack name → the same per MoE layer.
        router_lipschitz: attack name → Lips-R, the mean of MSE(R(x), R(x+δ)) / MSE(x, x+δ) on router probabilities.
        flops: forward FLOPs per clip of the evaluated model (multiply-add = 2), ``None`` if not counted.
        dense_flops: the same for the dense model of the same shape (same config without MoE).
        active_parameters / total_parameters: parameters used per routing unit / stored.
        dense_parameters: parameters of that dense model.
        eps, norm: the budget of ``worst_case_accuracy`` (``"linf"`` or ``"l2"``): the shared one of the attacks.
        input_shape: one clip's shape ``[frames, channels, height, width]``.
        steps: the shared step count (``None`` if each attack used its own default).
        seed: the base seed (each batch reseeds the global RNG with ``seed + batch_index``).
        attacks: attack names in evaluation order.
        attack_settings: attack name → ``Attack.settings()`` (steps, step sizes, seeds, weights...).
        attack_arguments: attack name → the exact ``build_attack`` arguments (with ``"name"``) of attacks built by
            name, so that ``evaluate_robustness(model, data, attacks=report.attack_arguments)`` rebuilds them; attacks
            given as instances are recorded as ``{"instance": class name}``.
        num_samples: evaluated samples.
        batch_size: batch size of the evaluation (part of the resumable state).
        eps_sweep: attack name → {ε: robust accuracy}; includes ``eps`` itself.
        expert_usage: ``{"clean": [[fraction per expert] per MoE layer], attack: [...]}``, the fraction of routing
            decisions (units × top-k) that went to each expert.
        routing_relevance: for MoE models, whether the learned routing matters: clean accuracy with the model's own
            routing (``learned``), with every routing unit sent to a random expert (``random``), with every unit forced
            to expert ``i`` (``forced[i]``; a whole path for model-level routing), ``learned_minus_random`` with its
            paired standard error ``learned_minus_random_se``, ``forced_spread`` (best − worst path) and
            ``num_samples``. ``None`` for dense models.
        frozen_routing: attack name → ``{"adv_input_clean_routing", "clean_input_adv_routing"}``: robust accuracy
            of the adversarial clips with the routing held at the clean decisions (damage that does not go through
            routing), and of the clean clips with the adversarial routing (damage routing alone does).
        perturbation_energy: attack name → per-frame mean squared L2 norm of δ (mean over samples), one value per frame.
        flags: [`ReliabilityFlag`]s raised by the reliability checks.
        checks: check name → ``"passed"``, ``"flagged"`` or ``"skipped: <reason>"``.
        steps_check: attack name → ``{"steps", "doubled_steps", "num_samples", "accuracy", "doubled_accuracy"}`` when
            ``check_steps=True``.
        model_class, model_type: what was evaluated.
        dataset_name: free-form dataset label (for the model card).
        versions: package versions that produced the report.
        per_sample: optional per-sample records (``index``, ``label``, ``clean_prediction``, ``predictions`` per
            attack), when evaluated with ``return_per_sample=True``. In cascade mode a sample an attack did not run
            on (already misclassified) has prediction -1 for it.
        mode: ``"full"`` (every attack on every sample) or ``"cascade"`` (each attack on the samples still standing:
            ``robust_accuracy`` is then cumulative, the accuracy after the attacks up to and including each one, and
            the perturbation energy counts the samples an attack did not run on as 0).
        exact_attacks: in cascade mode, the attacks that ran on every sample first (their accuracies are their own;
            the cascade's are cumulative over them too).
        worst_case_by_budget: budget key (``"linf:0.0313..."``) → ``{"norm", "eps", "attacks", "accuracy"}``: the worst
            case over the attacks that ran at that budget. ``worst_case_accuracy`` is the entry at ``norm`` / ``eps``;
            attacks at other budgets never count towards it. Empty in reports older than format version 3.

    Construction and [`load`] validate the report (types, accuracies in [0, 1], worst case <= robust <= clean, one
    budget per worst case) and raise a one-line `ValueError` / `TypeError` naming the field otherwise.
    """

    clean_accuracy: float
    robust_accuracy: dict[str, float]
    worst_case_accuracy: float
    num_samples: int
    eps: float
    norm: str = "linf"
    input_shape: list[int] | None = None
    steps: int | None = None
    seed: int | None = 0
    attacks: list[str] = field(default_factory=list)
    attack_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_arguments: dict[str, dict[str, Any]] = field(default_factory=dict)
    routing_change: dict[str, float] = field(default_factory=dict)
    routing_change_per_layer: dict[str, list[float]] = field(default_factory=dict)
    router_lipschitz: dict[str, float] = field(default_factory=dict)
    flops: int | None = None
    dense_flops: int | None = None
    active_parameters: int | None = None
    total_parameters: int | None = None
    dense_parameters: int | None = None
    batch_size: int | None = None
    eps_sweep: dict[str, dict[float, float]] = field(default_factory=dict)
    expert_usage: dict[str, list[list[float]]] = field(default_factory=dict)
    perturbation_energy: dict[str, list[float]] = field(default_factory=dict)
    routing_relevance: dict[str, Any] | None = None
    frozen_routing: dict[str, dict[str, float]] = field(default_factory=dict)
    flags: list[ReliabilityFlag] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    steps_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_class: str | None = None
    model_type: str | None = None
    dataset_name: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    per_sample: dict[str, Any] | None = None
    mode: str = "full"
    exact_attacks: list[str] = field(default_factory=list)
    worst_case_by_budget: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line `ValueError` / `TypeError` naming the field unless the report is self-consistent (also
        run on construction and load, and before a model card is built, so an edited report is caught)."""
        validate_report(self)

    @property
    def worst_case_attacks(self) -> list[str]:
        """The attacks the headline ``worst_case_accuracy`` spans (those that ran at ``norm`` / ``eps``)."""
        return list(worst_case_budget(self)["attacks"])

    # -- derived ------------------------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """Whether the evaluated model had MoE routers (routing diagnostics present)."""
        return bool(self.expert_usage)

    @property
    def flops_saving(self) -> float | None:
        """``1 - flops / dense_flops`` (fraction of the dense model's FLOPs saved), ``None`` if unknown."""
        if not self.flops or not self.dense_flops:
            return None
        return 1.0 - self.flops / self.dense_flops

    def is_cumulative(self, attack: str) -> bool:
        """Whether ``robust_accuracy[attack]`` counts every earlier attack too (cascade mode), not this one alone."""
        return self.mode == "cascade" and attack not in self.exact_attacks

    @property
    def flag_names(self) -> list[str]:
        return [flag.name for flag in self.flags]

    def attack_label(self, attack: str) -> str:
        """``"J-TLGA, L∞ ε=8/255, 10 steps"``, from the attack's recorded settings."""
        settings = self.attack_settings.get(attack, {})
        norm = settings.get("norm", self.norm)
        eps = settings.get("eps", self.eps)
        parts = [attack.upper(), f"{norm_symbol(norm)} ε={format_eps(eps, norm)}"]
        steps = settings.get("steps")
        if steps is not None:
            noun = ("query" if steps == 1 else "queries") if attack == "square" else ("step" if steps == 1 else "steps")
            parts.append(f"{steps} {noun}")
        return ", ".join(parts)

    # -- serialisation ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (ε keys of ``eps_sweep`` become their ``repr`` strings; parsing restores floats)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["flags"] = [flag.to_dict() for flag in self.flags]
        data["eps_sweep"] = {
            atk: {repr(float(e)): acc for e, acc in curve.items()} for atk, curve in self.eps_sweep.items()
        }
        data["format_version"] = REPORT_FORMAT_VERSION
        return json.loads(json.dumps(data, allow_nan=True))  # deep copy + proves it serialises

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobustnessReport":
        """Inverse of [`to_dict`]; unknown keys (from newer versions) are ignored."""
        if not isinstance(data, dict):
            raise TypeError(f"a report is a JSON object, got {type(data).__name__}")
        data = migrate_report_dict(data)
        missing = [
            name
            for name in ("clean_accuracy", "robust_accuracy", "worst_case_accuracy", "num_samples", "eps")
            if name not in data
        ]
        if missing:
            raise KeyError(f"missing {missing}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if not isinstance(kwargs.get("flags") or [], list) or not isinstance(kwargs.get("eps_sweep") or {}, dict):
            raise TypeError(
                f"flags must be a list and eps_sweep a dict, got {kwargs.get('flags')!r} and "
                f"{kwargs.get('eps_sweep')!r}"
            )
        kwargs["flags"] = [ReliabilityFlag.from_dict(flag) for flag in kwargs.get("flags") or []]
        kwargs["eps_sweep"] = {
            atk: {float(e): acc for e, acc in dict(curve).items()}
            for atk, curve in (kwargs.get("eps_sweep") or {}).items()
        }
        return cls(**kwargs)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON string (exact float round trip)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "RobustnessReport":
        """Parse a report written by [`to_json`]."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON report to ``path`` (atomically); returns the path."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RobustnessReport":
        """Read a report written by [`save`]; a file that is not one raises a `ValueError` naming it."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{path} is not a robustness report written by `RobustnessReport.save` ({err}).") from err

    # -- Markdown -----------------------------------------------------------------------------------------------------
    def headline(self) -> str:
        """One sentence with the worst-case number, the attacks and the budget."""
        attacks = self.worst_case_attacks
        return (
            f"**Worst-case robust accuracy: {_percent(self.worst_case_accuracy)}** "
            f"(a sample counts only if it resists all {len(attacks)} attacks: {', '.join(attacks)}; "
            f"{norm_symbol(self.norm)} ε = {format_eps(self.eps, self.norm)}, {self.num_samples} samples). "
            f"Clean accuracy: {_percent(self.clean_accuracy)}."
        )

    def accuracy_table(self) -> str:
        """Markdown table: clean, each attack (with routing change and Lips-R for MoE models), worst case."""
        moe = self.is_moe
        header = "| Evaluation | Accuracy |"
        rule = "|---|---:|"
        if moe:
            header += " Routing change | Lips-R |"
            rule += "---:|---:|"
        header += " Steps | Step size | Seed |"
        rule += "---:|---:|---:|"
        rows = [header, rule]
        pad = " – | – |" if moe else ""
        rows.append(f"| Clean | {_percent(self.clean_accuracy)} |{pad} – | – | – |")
        for attack in self.attacks:
            settings = self.attack_settings.get(attack, {})
            label = self.attack_label(attack)
            if self.is_cumulative(attack):
                label = f"after {label} (cascade: with every earlier attack)"
            row = f"| {label} | {_percent(self.robust_accuracy.get(attack))} |"
            if moe:
                row += f" {_percent(self.routing_change.get(attack))} | {_number(self.router_lipschitz.get(attack))} |"
            step_size = settings.get("step_size")
            row += (
                f" {settings.get('steps', '–')} | {_number(step_size, 4) if isinstance(step_size, (int, float)) else '–'}"
                f" | {settings.get('seed', '–')} |"
            )
            rows.append(row)
        if len(self.worst_case_by_budget) <= 1:
            rows.append(f"| **Worst case (all attacks)** | **{_percent(self.worst_case_accuracy)}** |{pad} | | |")
        for entry in self.worst_case_by_budget.values() if len(self.worst_case_by_budget) > 1 else ():
            label = f"{norm_symbol(entry['norm'])} ε={format_eps(entry['eps'], entry['norm'])}: {', '.join(entry['attacks'])}"
            rows.append(f"| **Worst case ({label})** | **{_percent(entry['accuracy'])}** |{pad} | | |")
        return "\n".join(rows)

    def sweep_table(self) -> str:
        """Markdown table of robust accuracy per attack per ε (empty string without a sweep)."""
        if not self.eps_sweep:
            return ""
        all_eps = sorted({e for curve in self.eps_sweep.values() for e in curve})
        rows = ["| Attack | " + " | ".join(f"ε={format_eps(e, self.norm)}" for e in all_eps) + " |"]
        rows.append("|---|" + "---:|" * len(all_eps))
        for attack, curve in self.eps_sweep.items():
            rows.append(f"| {attack} | " + " | ".join(_percent(curve.get(e)) for e in all_eps) + " |")
        return "\n".join(rows)

    def cost_table(self) -> str:
        """Markdown table: GFLOPs and parameters, this model vs the dense model of the same shape."""
        if self.flops is None and self.total_parameters is None:
            return ""

        def gflops(value):
            return "–" if value is None else f"{value / 1e9:.4g}"

        def params(value):
            return "–" if value is None else f"{value / 1e6:.4g} M"

        rows = ["| | This model | Dense model (same shape) |", "|---|---:|---:|"]
        rows.append(f"| GFLOPs per clip | {gflops(self.flops)} | {gflops(self.dense_flops)} |")
        rows.append(f"| Active parameters | {params(self.active_parameters)} | {params(self.dense_parameters)} |")
        rows.append(f"| Total parameters | {params(self.total_parameters)} | {params(self.dense_parameters)} |")
        if self.flops_saving is not None:
            rows.append(f"| FLOPs vs dense | {100 * (1 - self.flops_saving):.1f} % | 100 % |")
        return "\n".join(rows)

    def routing_table(self) -> str:
        """Markdown: clean accuracy with learned, random and forced routing, then the frozen-routing controls."""
        from .report_markdown import routing_table

        return routing_table(self)

    def flags_markdown(self) -> str:
        """Bullet list of reliability flags (or a line saying none was raised) and the checks that ran."""
        lines = []
        if self.flags:
            for flag in self.flags:
                evidence = ", ".join(f"{k}={_format_evidence(v)}" for k, v in flag.evidence.items())
                lines.append(f"- ⚠️ **{flag.name}**: {flag.message}" + (f" Evidence: {evidence}." if evidence else ""))
        else:
            lines.append("No reliability flag was raised.")
        if self.checks:
            lines.append("")
            lines.append("Checks: " + "; ".join(f"{name}: {status}" for name, status in self.checks.items()) + ".")
        return "\n".join(lines)

    def to_markdown(self, title: str | None = "Robustness report") -> str:
        """The whole report as Markdown: headline, accuracy table, ε sweep, cost, reliability flags."""
        parts = []
        if title:
            parts.append(f"## {title}")
        parts.append(self.headline())
        parts.append(self.accuracy_table())
        if self.eps_sweep:
            parts.append("### Robust accuracy vs ε\n\n" + self.sweep_table())
        if self.steps_check:
            rows = ["| Attack | Samples | Steps | Accuracy | 2× steps | Accuracy |", "|---|---:|---:|---:|---:|---:|"]
            for attack, info in self.steps_check.items():
                rows.append(
                    f"| {attack} | {info['num_samples']} | {info['steps']} | {_percent(info['accuracy'])} | "
                    f"{info['doubled_steps']} | {_percent(info['doubled_accuracy'])} |"
                )
            parts.append("### Step-count check\n\n" + "\n".join(rows))
        routing = self.routing_table()
        if routing:
            parts.append("### Routing relevance\n\n" + routing)
        cost = self.cost_table()
        if cost:
            parts.append("### Inference cost\n\n" + cost)
        parts.append("### Reliability checks\n\n" + self.flags_markdown())
        return "\n\n".join(parts) + "\n"

    # -- plots --------------------------------------------------------------------------------------------------------
    def plot(self, output_dir: str | os.PathLike, *, dpi: int = 120) -> dict[str, Path]:
        """Save the report's plots as PNG files in ``output_dir`` (matplotlib, Agg backend).

        Returns:
            ``{"eps_sweep": ..., "expert_usage": ..., "perturbation_energy": ...}`` → path, for the plots that have
            data (no ε sweep → no ``eps_sweep`` plot; dense model → no ``expert_usage`` plot).
        """
        return plot_report(self, output_dir, dpi=dpi)


def _format_evidence(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_evidence(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_evidence(v) for v in value) + "]"
    return str(value)
