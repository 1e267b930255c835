"""Longer Markdown sections of the robustness report (kept apart so that `report.py` stays about the data)."""

from __future__ import annotations

from .formatting import format_percent

__all__ = ["routing_table"]


_percent = format_percent


def routing_table(report) -> str:
    """Markdown: clean accuracy with learned, random and forced routing, then the frozen-routing controls."""
    relevance = report.routing_relevance
    if not relevance:
        return ""
    rows = [
        "| Routing | Clean accuracy |",
        "|---|---:|",
        f"| learned (the model's own) | {_percent(relevance['learned'])} |",
        f"| random expert for every routing unit | {_percent(relevance['random'])} |",
    ]
    for expert, value in enumerate(relevance["forced"]):
        rows.append(f"| forced to expert {expert} | {_percent(value)} |")
    diff, se = relevance["learned_minus_random"], relevance["learned_minus_random_se"]
    text = "\n".join(rows) + (
        f"\n\nLearned − random: {100 * diff:+.1f} ± {100 * se:.1f} points (paired over {relevance['num_samples']} clips,"
        f" ± one standard error); best − worst forced path: {100 * relevance['forced_spread']:.1f} points"
    )
    if "forced_disagreement" in relevance:  # reports written before these two fields lack them
        text += (
            f"; two forced paths disagree on {_percent(relevance['forced_disagreement'])} of the clips and "
            f"some path is right on {_percent(relevance['forced_oracle'])}"
        )
    text += "."
    if report.frozen_routing:
        rows = [
            "| Attack | Robust accuracy | Adversarial clip, clean routing | Clean clip, adversarial routing |",
            "|---|---:|---:|---:|",
        ]
        for attack, controls in report.frozen_routing.items():
            rows.append(
                f"| {attack} | {_percent(report.robust_accuracy.get(attack))} | "
                f"{_percent(controls.get('adv_input_clean_routing'))} | {_percent(controls.get('clean_input_adv_routing'))} |"
            )
        text += (
            "\n\nFrozen-routing controls: how much of each attack's damage goes through routing. Holding the routing "
            "at the clean decisions leaves only the damage that does not; replaying the adversarial routing on "
            "the clean clip shows the damage routing alone does.\n\n" + "\n".join(rows)
        )
    return text
