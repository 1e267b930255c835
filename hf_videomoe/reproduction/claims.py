"""The reproduction's "what holds" claims: each claim of the paper checked on the collected results by the paired
verdicts of `verdicts.compare`."""

from __future__ import annotations

import statistics

from .recipes import ATTACK_LABELS, DEFENSES, MODEL_STEP_ABLATIONS, PAPER_ATTACKS, Settings, eps_name
from .verdicts import Verdict, compare, finding, holm, on_seeds, seeds_phrase, survivors, values_of

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


#: The model-step ablations' claims as registered (docs/PROTOCOL.md, "Registration of 2026-12-07"): each against
#: J-TLAT (does the model-step attack explain the gap?) and against MoE AT (do steps 1 and 2 add robustness on top?).
MODEL_STEP_FAMILY_SIZE = 2 * len(MODEL_STEP_ABLATIONS)


def what_holds(results: dict, settings: Settings, ablation_seeds: list[int]) -> list[str]:
    """The generated "what holds" section: one block per family of claims, each verdict with its paired interval,
    and Holm's correction over the sign-test p-values within the family (docs/PROTOCOL.md)."""
    families = attack_table_families(results, settings)
    defenses = results["defenses"]
    if defenses:
        e = eps_name(settings.train_eps)
        if "j-tlat" in defenses and "moe-at" in defenses:
            primary = worst_case_claim(
                defenses["j-tlat"], defenses["moe-at"], "J-TLAT has a higher worst case than MoE AT (primary endpoint)"
            )
            families.append(
                (f"Primary endpoint (ε={e}): the protocol's one primary claim, a family of its own", [primary])
            )
        families.append((f"Table (b) — defenses (ε={e}), secondary claims", defense_claims(defenses)))
    ablations = results["ablations"]
    base = on_seeds(defenses.get("j-tlat", {}), ablation_seeds)
    if ablations and base:
        families.append(
            (
                "Ablations (J-TLAT; worst-case accuracy, seed-matched with the full J-TLAT)",
                ablation_claims(base, ablations),
            )
        )
        moe_at = on_seeds(defenses.get("moe-at", {}), ablation_seeds)
        model_step = model_step_claims(base, moe_at, ablations)
        if any(name in ablations for name in MODEL_STEP_ABLATIONS):
            families.append(
                (
                    "Why J-TLAT loses: step 3 on a strong attack's examples (issue 40's registered family)",
                    model_step,
                    MODEL_STEP_FAMILY_SIZE,
                )
            )
    out: list[str] = []
    for title, lines, *registered_size in families:  # a registered family carries its size: Holm counts all its claims
        holm(lines, registered_size[0] if registered_size else None)
        tested = [v for v in lines if isinstance(v, Verdict)]
        size = tested[0].family_size if tested else 0
        kept = survivors(lines)
        out.append(f"**{title}**")
        out += ["- " + str(line) for line in lines]
        if tested:
            out.append(
                "- Holm's correction over this family's "
                + (f"{size} paired claims" if size > 1 else "one claim")
                + (f" ({size - len(tested)} not tested yet, counted with p = 1)" if size > len(tested) else "")
                + ": "
                + (", ".join(finding(v) for v in kept) + " survive." if kept else "no verdict survives.")
            )
        out.append("")
    out.append(verdict_rules_note(settings, evaluated_clips(results, settings)))
    return out


def evaluated_clips(results: dict, settings: Settings) -> int:
    """How many clips the rows were evaluated on: ``eval_samples``, or fewer when the split is smaller (the validation
    split of ``--validation``), as the rows' per-clip records show."""
    for rows in results["defenses"].values():
        for row in rows.values():
            if "worst_case_correct" in row:
                return len(row["worst_case_correct"])
    return settings.eval_samples


def verdict_rules_note(settings: Settings, n_eval: int) -> str:
    split = "validation" if settings.eval_split == "validation" else "test"
    return (
        f"_Resolution: {n_eval} {split} clips, so one clip = {100 / n_eval:.2f} points. Verdicts are produced by fixed "
        "rules (`what_holds`, docs/PROTOCOL.md): **holds** = right direction on average and one-sided sign test over "
        "seeds p < 0.05 (with 5 seeds: every seed agrees; with 4 or fewer no claim can hold); **the opposite holds** "
        "= the same the other way; otherwise the paired mean difference's 95 % t interval over seeds names the "
        "outcome: **inconclusive** when it contains zero (the data cannot tell the sign; never read as no effect), "
        "**right direction** / **opposite direction, not significant by the sign test** when it excludes zero. "
        "Each block is one family of claims: Holm's correction runs over its sign-test p-values (two-sided for an "
        "opposite that holds, as its direction was read from the data); with five seeds the smallest one-sided p is "
        "1/32 and the smallest two-sided 1/16, so no verdict of a family of two or more can survive it._"
    )


def acc(attack: str):
    return lambda r: r["robust"][attack]


def attack_table_families(results: dict, settings: Settings) -> list[tuple[str, list]]:
    families = []
    eps_done = [e for e in settings.eps_values if results["attacks"].get(e)]
    for e in eps_done:
        families.append(
            (
                f"Table (a) — attack strength on the PGD-AT MoE at ε={eps_name(e)} (lower accuracy = stronger attack)",
                attack_table_claims(results["attacks"][e]),
            )
        )
    if len(eps_done) > 1:
        families.append(
            (
                "Table (a) across budgets",
                [
                    compare(
                        results["attacks"][lo],
                        results["attacks"][hi],
                        lambda r: r["worst_case"],
                        higher_is="a",
                        what=f"ε={eps_name(hi)} is stronger than ε={eps_name(lo)} (worst case)",
                    )
                    for lo, hi in zip(eps_done, eps_done[1:])
                ],
            )
        )
    return families


def attack_table_claims(att: dict) -> list:
    lines: list = [
        pair_claim(att, strong, weak, note)
        for strong, weak, note in (
            ("tla-r", "pgd-r", "the temporal Lipschitz router attack beats plain PGD on the router"),
            ("tlga-r", "tla-r", "guidance toward the weakest expert strengthens the router attack"),
            ("tla-m", "pgd", "TLA-M is stronger than PGD"),
            ("j-tla", "tla-m", "attacking router and model jointly beats the model-only attack"),
            ("j-tlga", "j-tla", "guidance strengthens the joint attack"),
            ("j-tlga", "pgd", "J-TLGA is stronger than PGD"),
        )
    ]
    means = {a: statistics.fmean(values_of(att, acc(a))) for a in PAPER_ATTACKS}
    strongest = min(means, key=means.get)
    tied = [a for a in PAPER_ATTACKS if means[a] == means[strongest]]
    if strongest == "j-tlga" or "j-tlga" in tied:
        verdict = "holds" if len(tied) == 1 else f"ties ({', '.join(ATTACK_LABELS[a] for a in tied)})"
    else:
        verdict = "does not hold"
    lines.append(
        f"J-TLGA is the strongest of the paper's seven attacks: **{verdict}** (strongest on average: "
        f"{ATTACK_LABELS[strongest]} {100 * means[strongest]:.1f}%, J-TLGA {100 * means['j-tlga']:.1f}%)"
    )
    lines.append(change_claim(att))
    worst = statistics.fmean(values_of(att, lambda r: r["worst_case"]))
    every = {a: statistics.fmean(values_of(att, acc(a))) for a in PAPER_ATTACKS}  # AutoAttack's are cumulative
    best_any = min(every, key=every.get)
    lines.append(
        f"AutoAttack-style worst case {100 * worst:.1f}% vs strongest single attack "
        f"{ATTACK_LABELS[best_any]} {100 * every[best_any]:.1f}% (gap {100 * (every[best_any] - worst):.1f} "
        "points: how much the attacks fool different clips)."
    )
    flags = sorted({f for r in att.values() for f in r.get("flags", [])})
    if flags:  # named with their seeds: one seed's flag must not read as every seed's
        lines.append(
            "Evaluator reliability flags on this model: "
            + ", ".join(
                f"{f} ({seeds_phrase([s for s in sorted(att) if f in att[s].get('flags', [])])})" for f in flags
            )
            + "."
        )
    return lines


def worst_case_claim(rows_a: dict, rows_b: dict, what: str) -> Verdict | str:
    return compare(rows_a, rows_b, lambda r: r["worst_case"], higher_is="a", what=what, per_clip="worst_case_correct")


def lips_r_claim(rows_a: dict, rows_b: dict, higher_is: str, what: str) -> Verdict | str:
    return compare(
        rows_a,
        rows_b,
        lambda r: r["router_lipschitz"]["j-tlga"],
        higher_is=higher_is,
        what=what,
        unit="",
        unit_scale=1.0,
        digits=3,
    )


def defense_claims(d: dict) -> list:
    lines: list = []
    if "j-tlat" in d and "moe-at" in d:
        for getter, what in (
            (acc("pgd"), "J-TLAT is more robust than MoE AT under PGD"),
            (acc("j-tlga"), "J-TLAT is more robust than MoE AT under J-TLGA"),
            (lambda r: r["clean"], "J-TLAT keeps (or improves) the clean accuracy of MoE AT"),
        ):
            lines.append(compare(d["j-tlat"], d["moe-at"], getter, higher_is="a", what=what))
        lines.append(
            lips_r_claim(
                d["j-tlat"], d["moe-at"], "b", "J-TLAT has a lower router Lipschitz estimate (Lips-R) than MoE AT"
            )
        )
    if "j-tlat" in d and "moe-at-matched" in d:
        lines.append(
            worst_case_claim(
                d["j-tlat"],
                d["moe-at-matched"],
                "J-TLAT has a higher worst case than MoE AT given the same wall-clock time",
            )
        )
    if "j-tlat" in d and "dense-at" in d:
        lines.append(
            compare(
                d["j-tlat"],
                d["dense-at"],
                acc("pgd"),
                higher_is="a",
                what="J-TLAT (MoE) is more robust under PGD than dense AT",
            )
        )
        lines.append(
            compare(
                d["j-tlat"],
                d["dense-at"],
                lambda r: r["worst_case"],
                higher_is="a",
                what="J-TLAT (MoE) has a higher worst case than dense AT",
            )
        )
    if "j-tlat" in d:
        others = [k for k in d if k != "j-tlat"]
        means = {k: statistics.fmean(values_of(d[k], lambda r: r["worst_case"])) for k in d}
        best = max(means, key=means.get)
        verdict = "holds" if best == "j-tlat" else "does not hold"
        lines.append(
            f"J-TLAT has the best worst case of all {len(others) + 1} defenses: **{verdict}** (best: "
            f"{DEFENSES[best][0]} {100 * means[best]:.1f}%, J-TLAT {100 * means['j-tlat']:.1f}%)"
        )
    if "tlat" in d and "moe-at" in d:
        lines.append(
            compare(d["tlat"], d["moe-at"], acc("pgd"), higher_is="a", what="TLAT is more robust than MoE AT under PGD")
        )
    if "advmoe" in d and "moe-at" in d:
        lines.append(
            compare(
                d["advmoe"],
                d["moe-at"],
                acc("pgd"),
                higher_is="a",
                what="AdvMoE-style is more robust than MoE AT under PGD",
            )
        )
        lines.append(drop_claim(d["advmoe"], "AdvMoE-style"))
    if "moe-at" in d and "dense-at" in d:
        lines += cost_lines(d)
    return lines


def cost_lines(d: dict) -> list[str]:
    lines = []
    moe_flops = values_of(d["moe-at"], lambda r: r["flops"])
    dense_flops = values_of(d["dense-at"], lambda r: r["flops"])
    if moe_flops and dense_flops:
        saving = 1 - statistics.fmean(moe_flops) / statistics.fmean(dense_flops)
        verdict = "holds" if saving > 0 else "does not hold"
        lines.append(
            f"The sparse MoE needs fewer FLOPs than the dense model (paper: 61.8 % fewer): "
            f"**{verdict}** ({100 * saving:+.1f} % saving; here the MoE is upcycled from the dense "
            "model with top-1 routing, so its active compute equals the dense model's plus the "
            "routers — the paper compares against a larger dense backbone)"
        )
    moe_t = values_of(d["moe-at"], lambda r: r["train"]["seconds_per_epoch"])
    if "j-tlat" in d and moe_t:
        jt = values_of(d["j-tlat"], lambda r: r["train"]["seconds_per_epoch"])
        lines.append(
            f"Training cost (not reported in the paper): J-TLAT takes "
            f"{statistics.fmean(jt) / statistics.fmean(moe_t):.1f}× the time per epoch of MoE AT "
            f"({statistics.fmean(jt):.0f}s vs {statistics.fmean(moe_t):.0f}s)."
        )
    return lines


def ablation_claims(base: dict, ab: dict) -> list:
    lines: list = [worst_case_claim(base, ab[name], what) for name, what in ABLATION_CLAIMS.items() if name in ab]
    if "balance-switch" in ab:
        lines.append(
            compare(
                base,
                ab["balance-switch"],
                lambda r: max(r["busiest_expert_share"]),
                higher_is="b",
                what="the sharp step-1 balance term keeps routing more balanced "
                "(busiest expert's share in the most unbalanced layer)",
                unit="",
                unit_scale=1.0,
                digits=2,
            )
        )
    if "no-lipschitz" in ab:
        lines.append(lips_r_claim(base, ab["no-lipschitz"], "b", "the Lipschitz term lowers Lips-R"))
    if "router-soft" in ab:  # issue 14's motivation for the soft target: the hard one sharpens routers
        lines.append(
            lips_r_claim(
                base,
                ab["router-soft"],
                "a",
                "the hard router target makes the router less smooth (higher Lips-R) than the soft one",
            )
        )
    return lines


def model_step_claims(base: dict, moe_at: dict, ab: dict) -> list:
    lines: list = []
    for name, attack in MODEL_STEP_ABLATIONS.items():
        if name not in ab:
            lines.append(
                f"J-TLAT with step 3 on {attack} examples (`{name}`): not run yet; its two claims enter Holm's "
                "correction with p = 1"
            )
            continue
        lines.append(
            worst_case_claim(
                ab[name], base, f"J-TLAT with step 3 on {attack} examples has a higher worst case than J-TLAT"
            )
        )
        what = f"J-TLAT with step 3 on {attack} examples has a higher worst case than MoE AT"
        if moe_at:
            lines.append(worst_case_claim(ab[name], moe_at, what))
        else:
            lines.append(f"{what}: **not measured** (no MoE AT rows on the ablation seeds); it enters Holm with p = 1")
    return lines


def pair_claim(att: dict, strong: str, weak: str, note: str) -> Verdict | str:
    return compare(
        project_attack(att, strong),
        project_attack(att, weak),
        lambda v: v,
        higher_is="b",
        what=f"{ATTACK_LABELS[strong]} < {ATTACK_LABELS[weak]} ({note})",
    )


def project_attack(rows: dict, attack: str) -> dict:
    return {s: r["robust"][attack] for s, r in rows.items()}


def change_claim(att: dict) -> Verdict | str:
    a = {s: r["routing_change"].get("tlga-r") for s, r in att.items()}
    b = {s: r["routing_change"].get("pgd") for s, r in att.items()}
    return compare(
        a,
        b,
        lambda v: v,
        higher_is="a",
        what="router attacks change routing more than PGD (routing change TLGA-R vs PGD)",
        unit="",
        unit_scale=1.0,
        digits=3,
    )


def drop_claim(rows: dict, label: str) -> Verdict | str:
    a = {s: r["robust"]["j-tlga"] for s, r in rows.items()}
    b = {s: r["robust"]["pgd"] for s, r in rows.items()}
    return compare(
        a, b, lambda v: v, higher_is="b", what=f"J-TLGA breaks {label} further than PGD (paper: 23.1 % → 0 %)"
    )
