"""The reproduction's Markdown tables and its "what holds" claims, from the collected results."""

from __future__ import annotations

import math
import statistics

from ..evaluation.paired_tests import mcnemar_exact, sign_test
from .recipes import (
    ABLATIONS,
    ATTACK_LABELS,
    ATTACK_TABLE_ATTACKS,
    DEFENSES,
    DEFENSE_ATTACKS,
    PAPER_ATTACKS,
    Settings,
    eps_name,
)


def values_of(rows: dict, getter) -> list[float]:
    out = []
    for row in rows.values():
        try:
            value = getter(row)
        except (KeyError, TypeError):
            value = None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out.append(float(value))
    return out


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


def accuracy_cells(rows: dict) -> list[str]:
    """Clean, PGD, J-TLGA and worst-case accuracy of one table row (mean ± std over its seeds)."""
    return [fmt(values_of(rows, lambda r: r["clean"])), fmt(values_of(rows, lambda r: r["robust"]["pgd"])),
            fmt(values_of(rows, lambda r: r["robust"]["j-tlga"])), fmt(values_of(rows, lambda r: r["worst_case"]))]


def attack_table_markdown(results: dict, settings: Settings) -> str:
    eps_list = [e for e in settings.eps_values if e in results["attacks"]]
    if not eps_list:
        return "_(no attack-table results yet)_"
    seeds = sorted({s for e in eps_list for s in results["attacks"][e]})
    header = "| attack | " + " | ".join(f"robust acc. % (ε={eps_name(e)}) | routing change (ε={eps_name(e)})"
                                         for e in eps_list) + " |"
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
        name = ATTACK_LABELS[attack] + ("" if attack in PAPER_ATTACKS else " (AutoAttack, cascade: after every "
                                                                           "earlier attack)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for e in eps_list:
        cells += [fmt(values_of(rows[e], lambda r: r["worst_case"])), "–"]
    lines.append("| **worst case** (per-sample, all 10 attacks) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Model: MoE AT (PGD-AT, trained at ε={eps_name(settings.train_eps)}) from table (b). Seeds: {', '.join(map(str, seeds))} (mean ± std over seeds). "
                 "Routing change = 1 − IoU of the selected experts, clean vs adversarial (0 = no change).")
    # Per ε, the seeds whose evaluation carries the controls (results older than the controls have none).
    frozen_rows = {e: {s: r for s, r in rows[e].items() if r.get("frozen_routing")} for e in eps_list}
    frozen_rows = {e: seed_rows for e, seed_rows in frozen_rows.items() if seed_rows}
    if frozen_rows:
        lines += ["", "Frozen-routing controls (robust accuracy %, mean ± std over the seeds named in each table): "
                  "the attack's perturbation with the routing held at the clean decisions (damage that does not go "
                  "through routing), and the clean clip with the adversarial routing (damage routing alone does)."]
    for e, seed_rows in frozen_rows.items():
        lines += ["", f"| attack (ε={eps_name(e)}; seeds {', '.join(map(str, sorted(seed_rows)))}) | robust | "
                  "adversarial clip, clean routing | clean clip, adversarial routing |", "|---|---:|---:|---:|"]
        for attack in ATTACK_TABLE_ATTACKS:
            if not all(attack in r["frozen_routing"] for r in seed_rows.values()):
                continue
            controls = [r["frozen_routing"][attack] for r in seed_rows.values()]
            robust = values_of(seed_rows, lambda r, a=attack: r["robust"][a])
            lines.append(f"| {ATTACK_LABELS[attack]} | {fmt(robust)} | "
                         f"{fmt([c['adv_input_clean_routing'] for c in controls])} | "
                         f"{fmt([c['clean_input_adv_routing'] for c in controls])} |")
    return "\n".join(lines)


def defense_table_markdown(results: dict, settings: Settings) -> str:
    if not results["defenses"]:
        return "_(no defense results yet)_"
    e = eps_name(settings.train_eps)
    lines = [f"| defense | clean % | PGD % (ε={e}) | J-TLGA % (ε={e}) | worst case % (ε={e}) | GFLOPs / clip | "
             f"Lips-R (J-TLGA) | train s / epoch (wall) | train CPU s / epoch | seeds |", "|---" * 10 + "|"]
    for key, (label, _, _) in DEFENSES.items():
        rows = results["defenses"].get(key)
        if not rows:
            continue
        lines.append("| " + " | ".join([
            label,
            *accuracy_cells(rows),
            fmt(values_of(rows, lambda r: r["flops"]), scale=1e-9, digits=4),
            fmt(values_of(rows, lambda r: r["router_lipschitz"]["j-tlga"]), scale=1.0, digits=3),
            fmt(values_of(rows, lambda r: r["train"]["seconds_per_epoch"]), scale=1.0, digits=0),
            fmt(values_of(rows, lambda r: r["train"].get("cpu_seconds_per_epoch")), scale=1.0, digits=0),
            str(len(rows)),
        ]) + " |")
    lines.append("")
    lines.append("Worst case = per-sample AND over " + ", ".join(ATTACK_LABELS[a] for a in DEFENSE_ATTACKS) +
                 " (J-TLGA is MoE-only, so the dense row's worst case is over the other five). Lips-R = mean "
                 "MSE(R(x), R(x+δ)) / MSE(x, x+δ) of the router probabilities under J-TLGA. GFLOPs: forward pass of "
                 "one clip (report.flops / 1e9).")
    return "\n".join(lines)


def ablation_table_markdown(results: dict, settings: Settings, seeds: list[int]) -> str:
    if not results["ablations"]:
        return "_(ablations skipped or not run yet)_"
    e = eps_name(settings.train_eps)
    lines = [f"| J-TLAT variant | clean % | PGD % (ε={e}) | J-TLGA % (ε={e}) | worst case % | Lips-R (J-TLGA) | "
             f"routing change (J-TLGA) | busiest expert share (max over layers) | train s / epoch (wall) | "
             f"train CPU s / epoch | seeds |", "|---" * 11 + "|"]
    base = {s: r for s, r in results["defenses"].get("j-tlat", {}).items() if s in seeds}
    rows_by_name = {"full J-TLAT (normalised temporal step, λ per component, aux, γ1 on)": base}
    for name, (label, _, _) in ABLATIONS.items():
        rows_by_name[label] = results["ablations"].get(name, {})
    for label, rows in rows_by_name.items():
        if not rows:
            continue
        lines.append("| " + " | ".join([
            label,
            *accuracy_cells(rows),
            fmt(values_of(rows, lambda r: r["router_lipschitz"]["j-tlga"]), scale=1.0, digits=3),
            fmt(values_of(rows, lambda r: r["routing_change"]["j-tlga"]), scale=1.0, digits=3),
            fmt(values_of(rows, lambda r: max(r["busiest_expert_share"])), scale=1.0, digits=2),
            fmt(values_of(rows, lambda r: r["train"]["seconds_per_epoch"]), scale=1.0, digits=0),
            fmt(values_of(rows, lambda r: r["train"].get("cpu_seconds_per_epoch")), scale=1.0, digits=0),
            str(len(rows)),
        ]) + " |")
    lines.append("")
    lines.append("Each variant changes one thing in J-TLAT (training only; evaluation is identical for every row). "
                 "The reference row is the J-TLAT row of table (b) restricted to the ablation seeds.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# "What holds": claims of the paper checked with simple rules on the measured numbers
# ----------------------------------------------------------------------------------------------------------------------

#: The claim each ablation tests, phrased for the full J-TLAT's choice against the ablation's (worst-case accuracy,
#: seed-matched); ``compare`` also tests the opposite direction when the mean goes against the claim.
ABLATION_CLAIMS = {
    "temporal-uniform": "the normalised temporal step rule beats the uniform rule",
    "temporal-published": "the normalised temporal step rule beats the published one",
    "temporal-inverse": "the normalised temporal step rule beats the inverse rule",
    "no-lipschitz": "the Lipschitz terms help",
    "one-lambda": "a λ per component beats the paper's single λ",
    "router-soft": "the hard router target (clean top-1) beats the soft one (clean probabilities)",
    "expert-tla-e": "step 2 on step 1's examples beats step 2 on TLA-E examples",
    "no-router-step": "step 1 (router) helps",
    "no-expert-step": "step 2 (experts) helps",
    "no-model-step": "step 3 (model) helps",
    "no-aux": "the load-balancing loss helps robustness",
    "no-guidance": "guidance (γ1) in the training attacks helps",
    "balance-switch": "the sharp step-1 balance term helps robustness (vs the Switch loss)",
    "sequential-update": "one summed update per batch beats the paper's three sequential updates",
}


def compare(rows_a: dict, rows_b: dict, getter, *, higher_is: str, what: str, unit_scale: float = 100.0,
            unit: str = "%", digits: int = 1, resolution: float = 0.0, per_clip: str | None = None) -> str:
    """Claim: ``a`` > ``b`` (``higher_is="a"``) or ``a`` < ``b`` (``higher_is="b"``) on seed-matched values, judged by
    the protocol's paired tests (docs/PROTOCOL.md).

    holds: the mean difference is in the claimed direction by more than ``resolution`` and the one-sided sign test
    across seeds gives p < 0.05 (with 5 seeds: all five agree); right direction, not significant: the mean agrees
    but the sign test does not; does not hold: otherwise. ``per_clip``: a row key holding per-clip correctness (e.g.
    ``"worst_case_correct"``): an exact McNemar test per seed is added (how many seeds reach p < 0.05). When the mean
    goes against the claim, both tests are run in the opposite direction as well, and "the opposite holds" is added
    when its sign test gives p < 0.05: a claim that fails because the reverse is true is reported as such, not as a
    tie.
    """
    seeds = sorted(set(rows_a) & set(rows_b))
    pairs = []
    for s in seeds:
        try:
            a, b = getter(rows_a[s]), getter(rows_b[s])
        except (KeyError, TypeError):
            continue
        if a is None or b is None:
            continue
        pairs.append((float(a), float(b)))
    if not pairs:
        return f"{what}: **not measured**"
    sign = 1.0 if higher_is == "a" else -1.0
    diffs = [sign * (a - b) for a, b in pairs]
    mean_a = statistics.fmean(a for a, _ in pairs)
    mean_b = statistics.fmean(b for _, b in pairs)
    mean_diff = statistics.fmean(diffs)
    p_value = sign_test(diffs, "greater")["p_value"]
    if mean_diff > resolution and p_value < 0.05:
        verdict = "holds"
    elif mean_diff > resolution:
        verdict = "right direction, not significant"
    elif abs(mean_diff) <= resolution:
        verdict = "does not hold (no measurable difference)"
    else:
        verdict = "does not hold"
    n = len(pairs)
    detail = (f"{unit_scale * mean_a:.{digits}f}{unit} vs {unit_scale * mean_b:.{digits}f}{unit}, "
              f"{n} seed{'s' if n != 1 else ''}, one-sided sign test p = {p_value:.3g}")
    against = mean_diff < -resolution
    if against:
        p_opposite = sign_test(diffs, "less")["p_value"]
        detail += f", opposite direction p = {p_opposite:.3g}"
        if p_opposite < 0.05:
            verdict += "; the opposite holds"
    if per_clip is not None:
        clip_seeds = [s for s in seeds if per_clip in rows_a[s] and per_clip in rows_b[s]]
        directions = [("McNemar per seed", higher_is == "a")]
        if against:
            directions.append(("McNemar, opposite direction", higher_is != "a"))
        for label, a_better in directions:
            tests = [mcnemar_exact(rows_a[s][per_clip], rows_b[s][per_clip], "greater" if a_better else "less")
                     for s in clip_seeds]
            if tests:
                detail += (f"; {label}: p < 0.05 in {sum(t['p_value'] < 0.05 for t in tests)} of {len(tests)} "
                           "(p = " + ", ".join(f"{t['p_value']:.2g}" for t in tests) + ")")
    return f"{what}: **{verdict}** ({detail})"


def seeds_phrase(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def what_holds(results: dict, settings: Settings, ablation_seeds: list[int]) -> list[str]:
    out: list[str] = []
    res = 0.0  # ties (identical accuracy) count as "no measurable difference"
    e8 = settings.train_eps

    def acc(a):
        return lambda r: r["robust"][a]

    eps_done = [e for e in settings.eps_values if results["attacks"].get(e)]
    for e in eps_done:
        att = results["attacks"][e]
        out.append(f"**Table (a) — attack strength on the PGD-AT MoE at ε={eps_name(e)} (lower accuracy = stronger "
                   "attack)**")
        for strong, weak, note in (
            ("tla-r", "pgd-r", "the temporal Lipschitz router attack beats plain PGD on the router"),
            ("tlga-r", "tla-r", "guidance toward the weakest expert strengthens the router attack"),
            ("tla-m", "pgd", "TLA-M is stronger than PGD"),
            ("j-tla", "tla-m", "attacking router and model jointly beats the model-only attack"),
            ("j-tlga", "j-tla", "guidance strengthens the joint attack"),
            ("j-tlga", "pgd", "J-TLGA is stronger than PGD"),
        ):
            out.append("- " + pair_claim(att, strong, weak, note))
        means = {a: statistics.fmean(values_of(att, acc(a))) for a in PAPER_ATTACKS}
        strongest = min(means, key=means.get)
        tied = [a for a in PAPER_ATTACKS if means[a] == means[strongest]]
        if strongest == "j-tlga" or "j-tlga" in tied:
            verdict = "holds" if len(tied) == 1 else f"ties ({', '.join(ATTACK_LABELS[a] for a in tied)})"
        else:
            verdict = "does not hold"
        out.append(f"- J-TLGA is the strongest of the paper's seven attacks: **{verdict}** (strongest on average: "
                   f"{ATTACK_LABELS[strongest]} {100 * means[strongest]:.1f}%, J-TLGA {100 * means['j-tlga']:.1f}%)")
        out.append("- " + change_claim(att))
        worst = statistics.fmean(values_of(att, lambda r: r["worst_case"]))
        every = {a: statistics.fmean(values_of(att, acc(a))) for a in PAPER_ATTACKS}  # AutoAttack's are cumulative
        best_any = min(every, key=every.get)
        out.append(f"- AutoAttack-style worst case {100 * worst:.1f}% vs strongest single attack "
                   f"{ATTACK_LABELS[best_any]} {100 * every[best_any]:.1f}% (gap {100 * (every[best_any] - worst):.1f} "
                   "points: how much the attacks fool different clips).")
        flags = sorted({f for r in att.values() for f in r.get("flags", [])})
        if flags:  # named with their seeds: one seed's flag must not read as every seed's
            out.append("- Evaluator reliability flags on this model: " + ", ".join(
                f"{f} ({seeds_phrase([s for s in sorted(att) if f in att[s].get('flags', [])])})" for f in flags) + ".")
        out.append("")
    if len(eps_done) > 1:
        out.append("**Table (a) across budgets**")
        for lo, hi in zip(eps_done, eps_done[1:]):
            out.append("- " + compare(results["attacks"][lo], results["attacks"][hi], lambda r: r["worst_case"],
                                      higher_is="a", what=f"ε={eps_name(hi)} is stronger than ε={eps_name(lo)} "
                                      "(worst case)", resolution=res))
        out.append("")

    d = results["defenses"]
    if d:
        out.append(f"**Table (b) — defenses (ε={eps_name(e8)})**")
        if "j-tlat" in d and "moe-at" in d:
            for getter, what in ((acc("pgd"), "J-TLAT is more robust than MoE AT under PGD"),
                                 (acc("j-tlga"), "J-TLAT is more robust than MoE AT under J-TLGA"),
                                 (lambda r: r["clean"], "J-TLAT keeps (or improves) the clean accuracy of MoE AT")):
                out.append("- " + compare(d["j-tlat"], d["moe-at"], getter, higher_is="a", what=what, resolution=res))
            out.append("- " + compare(d["j-tlat"], d["moe-at"], lambda r: r["worst_case"], higher_is="a",
                                      what="J-TLAT has a higher worst case than MoE AT (primary endpoint)",
                                      resolution=res, per_clip="worst_case_correct"))
            out.append("- " + compare(d["j-tlat"], d["moe-at"], lambda r: r["router_lipschitz"]["j-tlga"],
                                      higher_is="b", what="J-TLAT has a lower router Lipschitz estimate (Lips-R) "
                                      "than MoE AT", unit="", unit_scale=1.0, digits=3))
        if "j-tlat" in d and "moe-at-matched" in d:
            out.append("- " + compare(d["j-tlat"], d["moe-at-matched"], lambda r: r["worst_case"], higher_is="a",
                                      what="J-TLAT has a higher worst case than MoE AT given the same wall-clock time",
                                      resolution=res, per_clip="worst_case_correct"))
        if "j-tlat" in d and "dense-at" in d:
            out.append("- " + compare(d["j-tlat"], d["dense-at"], acc("pgd"), higher_is="a",
                                      what="J-TLAT (MoE) is more robust under PGD than dense AT", resolution=res))
            out.append("- " + compare(d["j-tlat"], d["dense-at"], lambda r: r["worst_case"], higher_is="a",
                                      what="J-TLAT (MoE) has a higher worst case than dense AT", resolution=res))
        if "j-tlat" in d:
            others = [k for k in d if k != "j-tlat"]
            means = {k: statistics.fmean(values_of(d[k], lambda r: r["worst_case"])) for k in d}
            best = max(means, key=means.get)
            verdict = "holds" if best == "j-tlat" else "does not hold"
            out.append(f"- J-TLAT has the best worst case of all {len(others) + 1} defenses: **{verdict}** (best: "
                       f"{DEFENSES[best][0]} {100 * means[best]:.1f}%, J-TLAT {100 * means['j-tlat']:.1f}%)")
        if "tlat" in d and "moe-at" in d:
            out.append("- " + compare(d["tlat"], d["moe-at"], acc("pgd"), higher_is="a",
                                      what="TLAT is more robust than MoE AT under PGD", resolution=res))
        if "advmoe" in d and "moe-at" in d:
            out.append("- " + compare(d["advmoe"], d["moe-at"], acc("pgd"), higher_is="a",
                                      what="AdvMoE-style is more robust than MoE AT under PGD", resolution=res))
            out.append("- " + drop_claim(d["advmoe"], "AdvMoE-style"))
        if "moe-at" in d and "dense-at" in d:
            moe_flops = values_of(d["moe-at"], lambda r: r["flops"])
            dense_flops = values_of(d["dense-at"], lambda r: r["flops"])
            if moe_flops and dense_flops:
                saving = 1 - statistics.fmean(moe_flops) / statistics.fmean(dense_flops)
                verdict = "holds" if saving > 0 else "does not hold"
                out.append(f"- The sparse MoE needs fewer FLOPs than the dense model (paper: 61.8 % fewer): "
                           f"**{verdict}** ({100 * saving:+.1f} % saving; here the MoE is upcycled from the dense "
                           "model with top-1 routing, so its active compute equals the dense model's plus the "
                           "routers — the paper compares against a larger dense backbone)")
            moe_t = values_of(d["moe-at"], lambda r: r["train"]["seconds_per_epoch"])
            if "j-tlat" in d and moe_t:
                jt = values_of(d["j-tlat"], lambda r: r["train"]["seconds_per_epoch"])
                out.append(f"- Training cost (not reported in the paper): J-TLAT takes "
                           f"{statistics.fmean(jt) / statistics.fmean(moe_t):.1f}× the time per epoch of MoE AT "
                           f"({statistics.fmean(jt):.0f}s vs {statistics.fmean(moe_t):.0f}s).")
        out.append("")

    ab = results["ablations"]
    base = {s: r for s, r in d.get("j-tlat", {}).items() if s in ablation_seeds}
    if ab and base:
        out.append("**Ablations (J-TLAT; worst-case accuracy, seed-matched with the full J-TLAT)**")
        for name, what in ABLATION_CLAIMS.items():
            if name in ab:
                out.append("- " + compare(base, ab[name], lambda r: r["worst_case"], higher_is="a", what=what,
                                          resolution=res, per_clip="worst_case_correct"))
        if "balance-switch" in ab:
            out.append("- " + compare(base, ab["balance-switch"], lambda r: max(r["busiest_expert_share"]),
                                      higher_is="b", what="the sharp step-1 balance term keeps routing more balanced "
                                      "(busiest expert's share in the most unbalanced layer)", unit="", unit_scale=1.0,
                                      digits=2))
        if "no-lipschitz" in ab:
            out.append("- " + compare(base, ab["no-lipschitz"], lambda r: r["router_lipschitz"]["j-tlga"],
                                      higher_is="b", what="the Lipschitz term lowers Lips-R", unit="", unit_scale=1.0,
                                      digits=3))
        if "router-soft" in ab:  # issue 14's motivation for the soft target: the hard one sharpens routers
            out.append("- " + compare(base, ab["router-soft"], lambda r: r["router_lipschitz"]["j-tlga"],
                                      higher_is="a", what="the hard router target makes the router less smooth "
                                      "(higher Lips-R) than the soft one", unit="", unit_scale=1.0, digits=3))
        out.append("")
    n_eval = settings.eval_samples
    out.append(f"_Resolution: {n_eval} test clips, so one clip = {100 / n_eval:.2f} points; differences of a few points "
               "with this few seeds are within noise. Verdicts are produced by fixed rules (script: "
               "`what_holds`, docs/PROTOCOL.md): **holds** = right direction on average and one-sided sign test over "
               "seeds p < 0.05 (with 5 seeds: every seed agrees; with 3 or fewer no claim can hold), **right "
               "direction, not significant** = right on average only, **does not hold** = otherwise; where the mean "
               "goes against a claim, the same tests are run the other way, and **the opposite holds** is added when "
               "that sign test gives p < 0.05._")
    return out


def pair_claim(att: dict, strong: str, weak: str, note: str) -> str:
    return compare(project_attack(att, strong), project_attack(att, weak), lambda v: v, higher_is="b",
                   what=f"{ATTACK_LABELS[strong]} < {ATTACK_LABELS[weak]} ({note})")


def project_attack(rows: dict, attack: str) -> dict:
    return {s: r["robust"][attack] for s, r in rows.items()}


def change_claim(att: dict) -> str:
    a = {s: r["routing_change"].get("tlga-r") for s, r in att.items()}
    b = {s: r["routing_change"].get("pgd") for s, r in att.items()}
    return compare(a, b, lambda v: v, higher_is="a", what="router attacks change routing more than PGD "
                   "(routing change TLGA-R vs PGD)", unit="", unit_scale=1.0, digits=3)


def drop_claim(rows: dict, label: str) -> str:
    a = {s: r["robust"]["j-tlga"] for s, r in rows.items()}
    b = {s: r["robust"]["pgd"] for s, r in rows.items()}
    return compare(a, b, lambda v: v, higher_is="b", what=f"J-TLGA breaks {label} further than PGD (paper: "
                   "23.1 % → 0 %)")


# ----------------------------------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------------------------------
