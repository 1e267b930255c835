"""The reproduction's Markdown tables, from the collected results. The "what holds" claims are in `claims` and the
paired verdicts they use in `verdicts`; their public names stay importable from here too."""

from __future__ import annotations

import statistics

from ..evaluation.paired_tests import paired_mean_interval
from .claims import ABLATION_CLAIMS as ABLATION_CLAIMS
from .claims import what_holds as what_holds
from .recipes import (
    ABLATIONS,
    ATTACK_LABELS,
    ATTACK_TABLE_ATTACKS,
    DEFENSE_ATTACKS,
    DEFENSES,
    PAPER_ATTACKS,
    Settings,
    eps_name,
)
from .verdicts import compare as compare
from .verdicts import seeds_phrase as seeds_phrase
from .verdicts import values_of


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if std is not None:
        text += f" ± {scale * std:.{digits}f}"
    return text


def paired_delta_cell(rows: dict, reference: dict, getter=lambda r: r["worst_case"]) -> str:
    """Paired mean difference ``rows − reference`` in points over their shared seeds, with its 95 % t interval."""
    diffs = []
    for seed in sorted(set(rows) & set(reference)):
        try:
            diffs.append(getter(rows[seed]) - getter(reference[seed]))
        except (KeyError, TypeError):
            continue
    if not diffs:
        return "–"
    interval = paired_mean_interval(diffs)
    text = f"{100 * interval['mean']:+.1f}"
    if interval["low"] is not None:
        text += f" [{100 * interval['low']:+.1f}, {100 * interval['high']:+.1f}]"
    return text


def accuracy_cells(rows: dict) -> list[str]:
    """Clean, PGD, J-TLGA and worst-case accuracy of one table row (mean ± std over its seeds)."""
    return [
        fmt(values_of(rows, lambda r: r["clean"])),
        fmt(values_of(rows, lambda r: r["robust"]["pgd"])),
        fmt(values_of(rows, lambda r: r["robust"]["j-tlga"])),
        fmt(values_of(rows, lambda r: r["worst_case"])),
    ]


def attack_table_markdown(results: dict, settings: Settings) -> str:
    eps_list = [e for e in settings.eps_values if e in results["attacks"]]
    if not eps_list:
        return "_(no attack-table results yet)_"
    seeds = sorted({s for e in eps_list for s in results["attacks"][e]})
    header = (
        "| attack | "
        + " | ".join(f"robust acc. % (ε={eps_name(e)}) | routing change (ε={eps_name(e)})" for e in eps_list)
        + " |"
    )
    lines = [header, "|---" * (1 + 2 * len(eps_list)) + "|"]
    rows = results["attacks"]
    first = [("clean", lambda r: r["clean"], None)]
    for label, acc_getter, change_getter in first:
        cells = []
        for e in eps_list:
            cells += [fmt(values_of(rows[e], acc_getter)), "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for attack in ATTACK_TABLE_ATTACKS:
        cells = []
        for e in eps_list:
            cells.append(fmt(values_of(rows[e], lambda r, a=attack: r["robust"][a])))
            cells.append(fmt(values_of(rows[e], lambda r, a=attack: r["routing_change"].get(a)), scale=1.0, digits=3))
        name = ATTACK_LABELS[attack] + (
            "" if attack in PAPER_ATTACKS else " (AutoAttack, cascade: after every earlier attack)"
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for e in eps_list:
        cells += [fmt(values_of(rows[e], lambda r: r["worst_case"])), "–"]
    lines.append("| **worst case** (per-sample, all 10 attacks) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Model: MoE AT (PGD-AT, trained at ε={eps_name(settings.train_eps)}) from table (b). Seeds: {', '.join(map(str, seeds))} (mean ± std over seeds). "
        "Routing change = 1 − IoU of the selected experts, clean vs adversarial (0 = no change)."
    )
    # Per ε, the seeds whose evaluation carries the controls (results older than the controls have none).
    frozen_rows = {e: {s: r for s, r in rows[e].items() if r.get("frozen_routing")} for e in eps_list}
    frozen_rows = {e: seed_rows for e, seed_rows in frozen_rows.items() if seed_rows}
    if frozen_rows:
        lines += [
            "",
            "Frozen-routing controls (robust accuracy %, mean ± std over the seeds named in each table): "
            "the attack's perturbation with the routing held at the clean decisions (damage that does not go "
            "through routing), and the clean clip with the adversarial routing (damage routing alone does).",
        ]
    for e, seed_rows in frozen_rows.items():
        lines += [
            "",
            f"| attack (ε={eps_name(e)}; seeds {', '.join(map(str, sorted(seed_rows)))}) | robust | "
            "adversarial clip, clean routing | clean clip, adversarial routing |",
            "|---|---:|---:|---:|",
        ]
        for attack in ATTACK_TABLE_ATTACKS:
            if not all(attack in r["frozen_routing"] for r in seed_rows.values()):
                continue
            controls = [r["frozen_routing"][attack] for r in seed_rows.values()]
            robust = values_of(seed_rows, lambda r, a=attack: r["robust"][a])
            lines.append(
                f"| {ATTACK_LABELS[attack]} | {fmt(robust)} | "
                f"{fmt([c['adv_input_clean_routing'] for c in controls])} | "
                f"{fmt([c['clean_input_adv_routing'] for c in controls])} |"
            )
    return "\n".join(lines)


def defense_table_markdown(results: dict, settings: Settings) -> str:
    if not results["defenses"]:
        return "_(no defense results yet)_"
    e = eps_name(settings.train_eps)
    lines = [
        f"| defense | clean % | PGD % (ε={e}) | J-TLGA % (ε={e}) | worst case % (ε={e}) | worst case − MoE AT, "
        f"points [95 % CI] | GFLOPs / clip | Lips-R (J-TLGA) | train s / epoch (wall) | train CPU s / epoch | seeds |",
        "|---" * 11 + "|",
    ]
    moe_at = results["defenses"].get("moe-at", {})
    for key, (label, _, _) in DEFENSES.items():
        rows = results["defenses"].get(key)
        if not rows:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    *accuracy_cells(rows),
                    "–" if key == "moe-at" else paired_delta_cell(rows, moe_at),
                    fmt(values_of(rows, lambda r: r["flops"]), scale=1e-9, digits=4),
                    fmt(values_of(rows, lambda r: r["router_lipschitz"]["j-tlga"]), scale=1.0, digits=3),
                    fmt(values_of(rows, lambda r: r["train"]["seconds_per_epoch"]), scale=1.0, digits=0),
                    fmt(values_of(rows, lambda r: r["train"].get("cpu_seconds_per_epoch")), scale=1.0, digits=0),
                    str(len(rows)),
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        "Worst case = per-sample AND over "
        + ", ".join(ATTACK_LABELS[a] for a in DEFENSE_ATTACKS)
        + " (J-TLGA is MoE-only, so the dense row's worst case is over the other five). Lips-R = mean "
        "MSE(R(x), R(x+δ)) / MSE(x, x+δ) of the router probabilities under J-TLGA. GFLOPs: forward pass of "
        "one clip (report.flops / 1e9). Worst case − MoE AT: the paired mean difference over the seeds both rows "
        "have, with its 95 % t interval; an interval that contains zero cannot tell which row is better."
    )
    return "\n".join(lines)


def ablation_table_markdown(results: dict, settings: Settings, seeds: list[int]) -> str:
    if not results["ablations"]:
        return "_(ablations skipped or not run yet)_"
    e = eps_name(settings.train_eps)
    lines = [
        f"| J-TLAT variant | clean % | PGD % (ε={e}) | J-TLGA % (ε={e}) | worst case % | worst case − J-TLAT, "
        f"points [95 % CI] | Lips-R (J-TLGA) | routing change (J-TLGA) | busiest expert share (max over layers) | "
        f"train s / epoch (wall) | train CPU s / epoch | seeds |",
        "|---" * 12 + "|",
    ]
    base = {s: r for s, r in results["defenses"].get("j-tlat", {}).items() if s in seeds}
    rows_by_name = {"full J-TLAT (normalised temporal step, λ per component, aux, γ1 on)": base}
    for name, (label, _, _) in ABLATIONS.items():
        rows_by_name[label] = results["ablations"].get(name, {})
    for label, rows in rows_by_name.items():
        if not rows:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    *accuracy_cells(rows),
                    "–" if rows is base else paired_delta_cell(rows, base),
                    fmt(values_of(rows, lambda r: r["router_lipschitz"]["j-tlga"]), scale=1.0, digits=3),
                    fmt(values_of(rows, lambda r: r["routing_change"]["j-tlga"]), scale=1.0, digits=3),
                    fmt(values_of(rows, lambda r: max(r["busiest_expert_share"])), scale=1.0, digits=2),
                    fmt(values_of(rows, lambda r: r["train"]["seconds_per_epoch"]), scale=1.0, digits=0),
                    fmt(values_of(rows, lambda r: r["train"].get("cpu_seconds_per_epoch")), scale=1.0, digits=0),
                    str(len(rows)),
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        "Each variant changes one thing in J-TLAT (training only; evaluation is identical for every row). "
        "The reference row is the J-TLAT row of table (b) restricted to the ablation seeds; worst case − J-TLAT is "
        "the paired mean difference over the seeds both rows have, with its 95 % t interval."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------------------------------
