"""The pages of the routing-relevance rounds (``hf_videomoe.reproduction.routing_rounds``): docs/routing_relevance.md
(VideoMAE-MoE, rounds 1-14) and docs/routing_relevance_timesformer.md (TimeSformer-MoE, rounds 15-16), as Markdown
lines built from the result files ``scripts/routing_relevance.py`` writes (``variant_<i>.json``, ``at_<i>.json``: ``i``
is the variant's position in ``VARIANTS`` / ``AT_VARIANTS``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from ..evaluation.paired_tests import mcnemar_exact
from .routing_rounds import AT_VARIANTS, TIMESFORMER_ROUNDS, VARIANTS, timesformer_passes, timesformer_verdicts

__all__ = ["relevance_page", "relevance_rows", "timesformer_page", "timesformer_rows"]


def dense_epochs_of(folder: Path, default: float) -> float:
    """The dense phase of a round's output folder: ``outputs/rr_d20`` -> 20 (``--dense-epochs``), else the default."""
    match = re.search(r"_d(\d+)(_s\d+)?$", folder.name)
    return float(match.group(1)) if match else default


def seed_of(folder: Path, row: dict) -> int:
    """The seed of a round: recorded in the row, else from the folder name (``outputs/rr_d20_s1`` -> 1), else 0."""
    if row.get("seed") is not None:
        return int(row["seed"])
    match = re.search(r"_s(\d+)$", folder.name)
    return int(match.group(1)) if match else 0


def relevance_rows(folders: Iterable[Path], at_folders: Iterable[Path], dense_epochs: float) -> tuple[list, list]:
    """The VideoMAE rows of ``relevance_page``: the mixtures in ``folders`` (their dense phase from the folder name,
    else ``dense_epochs``), and the adversarially fine-tuned mixtures in ``at_folders`` (else 30 dense epochs); in the
    order of the variants, a folder given twice read once."""
    folders, at_folders = list(dict.fromkeys(folders)), list(dict.fromkeys(at_folders))
    rows = []
    for i, label in enumerate(VARIANTS):
        for folder in folders:
            if (folder / f"variant_{i}.json").exists():
                row = json.loads((folder / f"variant_{i}.json").read_text())
                if row.get("model_type", "videomae") != "videomae":  # TimeSformer rows (rounds 15-16): own page
                    continue
                row["label"], row["dense_epochs"] = label, dense_epochs_of(folder, dense_epochs)
                row["seed"] = seed_of(folder, row)
                rows.append(row)
    at_rows = [
        {
            **json.loads((folder / f"at_{i}.json").read_text()),
            "label": label,
            "dense_epochs": dense_epochs_of(folder, 30),
        }
        for i, label in enumerate(AT_VARIANTS)
        for folder in at_folders
        if (folder / f"at_{i}.json").exists()
    ]
    return rows, at_rows


def timesformer_rows(folders: Iterable[Path]) -> list[dict]:
    """The TimeSformer rows of ``timesformer_page`` in ``folders`` (a folder that does not exist has none), each with
    the ``path`` of its result file."""
    rows = []
    for folder in folders:
        for path in sorted(folder.glob("variant_*.json")):
            row = json.loads(path.read_text())
            if row.get("model_type") == "timesformer":
                rows.append({**row, "path": path.as_posix()})
    return rows


def percent_se(values: dict, key: str) -> str:
    """``+12.3 ± 1.2``: ``values[key]`` and its standard error ``values[key + "_se"]``, in points."""
    return f"{100 * values[key]:+.1f} ± {100 * values[key + '_se']:.1f}"


def robustness_cell(robustness: dict | None) -> str:
    if not robustness:
        return "–"
    return (
        f"{100 * robustness['pgd']:.1f} / {100 * robustness['j-tlga']:.1f} / "
        f"**{100 * robustness['worst']:.1f} ± {100 * robustness['worst_se']:.1f}**"
    )


def relevance_page(
    rows: list[dict],
    at_rows: list[dict],
    *,
    seed: int,
    num_videos: int,
    dense_epochs: float,
    moe_epochs: float,
    at_dir: str | Path,
) -> list[str]:
    """docs/routing_relevance.md: one row per mixture (``--stage variants``; each with its ``label``,
    ``dense_epochs`` and ``seed``), then one per adversarially fine-tuned mixture (``--stage at``, read from
    ``at_dir`` and further folders) and round 13's McNemar tests. ``seed`` ... ``moe_epochs``: the defaults the intro
    describes."""
    lines = [
        "# Routing relevance: gate × expert initialisation",
        "",
        f"`python scripts/routing_relevance.py --stage dense|variants|report` (seed {seed}, "
        f"{num_videos} MovingShapes clips, dense VideoMAE trained {dense_epochs:g} epochs, upcycled to 4 "
        f"experts top-1 and fine-tuned without attacks for {moe_epochs:g} epochs at 5e-4, or 20 epochs at 1e-3 "
        "in the rows marked '20 ep'; every number on a validation split carved from train, {n} clips; the rows "
        "marked 'demo size' and 'dense phase varied' come from `--num-videos 3000` runs: 1,800 training clips like "
        "the demo's, 449 validation clips, with the dense phase in the second column; so do rounds 11-12). Learned − "
        "random is paired over clips (± one standard error); expert distance is the mean relative distance of each "
        "expert's up-projection from the experts' mean; smallest path share (model-level routing, recorded from "
        "round 11 on) is the fraction of validation clips the least used expert path receives under learned "
        "routing.".format(n=rows[0]["after"]["num_samples"] if rows else 0),
        "",
        "| variant | dense epochs | clean before fine-tuning | clean, learned routing | random routing | "
        "learned − random | forced paths 0 / 1 / 2 / 3 | best − worst path | expert distance | smallest path share |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        a = row["after"]
        forced = " / ".join(f"{100 * v:.1f}" for v in a["forced"])
        row_seed = f" (seed {row['seed']})" if row["seed"] else ""
        lines.append(
            f"| {row['label']}{row_seed} | {row['dense_epochs']:g} | {100 * row['before']['learned']:.1f} | "
            f"{100 * a['learned']:.1f} | {100 * a['random']:.1f} | {percent_se(a, 'learned_minus_random')}"
            f" | {forced} | {100 * a['forced_spread']:.1f} | {row['expert_distance']:.3f} | "
            + (f"{100 * min(row['path_share']):.1f} % |" if "path_share" in row else "– |")
        )
    if at_rows:
        lines += adversarial_section(at_rows, Path(at_dir))
    return lines + [
        "",
        "What these numbers decided (the gate default, the demo's expert initialisation and mixture phase): "
        'docs/METHOD.md §1, "Measurement behind the defaults".',
    ]


def adversarial_section(at_rows: list[dict], at_dir: Path) -> list[str]:
    """The section on adversarial fine-tuning (rounds 3, 7-8, 10, 13-14) of docs/routing_relevance.md."""
    lines = [
        "",
        "## Does adversarial fine-tuning keep the routing relevant?",
        "",
        "A mixture (straight-through gate, Drop-Upcycling 0.5, mixture phase of 20 or 30 epochs at 1e-3) followed "
        "by 5 epochs of adversarial training with 2-step attacks at ε = 4/255, at the demo's training-set size "
        f"(1,800 training clips, {at_rows[0]['after']['num_samples']} validation clips carved from train): "
        f"`--stage dense|at --num-videos 3000 --output-dir {at_dir.as_posix()}` (dense phase of 30 epochs) and "
        "`--output-dir outputs/rr_d20` (rows 'dense 20 ep').",
        "",
        "| recipe | dense epochs | learned − random before AT | clean after AT | random routing | "
        "learned − random | forced paths 0 / 1 / 2 / 3 | best − worst path | PGD / J-TLGA / worst of both "
        "(rounds 10, 13) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in at_rows:
        a, b = row["after"], row["before"]
        forced = " / ".join(f"{100 * v:.1f}" for v in a["forced"])
        seed = f" (seed {row['seed']})" if row.get("seed") else ""
        lines.append(
            f"| {row['label']}{seed} | {row['dense_epochs']:g} | {percent_se(b, 'learned_minus_random')} | "
            f"{100 * a['learned']:.1f} | {100 * a['random']:.1f} | {percent_se(a, 'learned_minus_random')} | "
            f"{forced} | {100 * a['forced_spread']:.1f} | {robustness_cell(row.get('robustness'))} |"
        )
    paired = {}
    for row in at_rows:
        if row["label"].startswith("round 13") and row.get("robustness"):
            paired.setdefault(row["seed"], {})[row["options"]["method"]] = row["robustness"]["worst_correct"]
    tests = [(seed, mcnemar_exact(p["j-tlat"], p["pgd-at"])) for seed, p in sorted(paired.items()) if len(p) == 2]
    if tests:
        lines += [
            "",
            "Round 13, J-TLAT against PGD-AT on the per-clip worst of PGD and J-TLGA (exact McNemar, two-sided): "
            + "; ".join(
                f"seed {seed}: {t['a_only']} clips only J-TLAT keeps, {t['b_only']} only PGD-AT, p = {t['p_value']:.2g}"
                for seed, t in tests
            )
            + ".",
        ]
    return lines


def timesformer_page(rows: list[dict]) -> list[str]:
    """docs/routing_relevance_timesformer.md: one row per recipe and seed (each row with its result file's ``path``),
    then each round's verdicts by ``timesformer_verdicts`` and the decision. Raises ``ValueError`` for a row that is
    no recipe of rounds 15-16 or that the rule cannot judge."""
    lines = [
        "# Routing relevance of TimeSformer-MoE (rounds 15-16)",
        "",
        "`python scripts/routing_relevance.py --stage dense|variants --model-type timesformer --num-videos 3000 "
        "--dense-epochs 20|40 --seed 0|1|2 --output-dir outputs/rr_ts_d20|rr_ts_d40[_s1|_s2]`, then `--stage report "
        "--model-type timesformer`. Each row: the reproduction's dense TimeSformer (random time embeddings) trained "
        "for the dense phase, upcycled with the demo's mixture recipe (model-level clustered routers, Drop-Upcycling "
        "0.5, 4 experts top-1) and fine-tuned without attacks; every number on the validation split carved from "
        'train. Rule, fixed before round 15 ran (docs/PROTOCOL.md, "Schedule", step 5): a recipe passes when on each '
        "of seeds 0-2 learned - random >= +5 points and >= 2 standard errors and every expert path serves >= 10 % of "
        "the clips; once every recipe of a round has failed or run its seeds, the highest mean clean accuracy among "
        "passes is chosen, or a cheaper one (fewer dense + mixture epochs) within one standard error (over seeds) of "
        "it. Round 16 (a stronger balance loss on round 15's best row) was written after round 15 failed and counts "
        "only if round 15 chose nothing.",
        "",
        "| recipe | dense epochs | seed | clean, learned routing | random routing | learned - random | "
        "expert paths (share of clips) | passes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in sorted(rows, key=lambda row: (row["label"], row["dense"]["epochs"], row["seed"])):
        a = row["after"]
        shares = " / ".join(f"{100 * share:.0f}" for share in row["path_share"])
        lines.append(
            f"| {row['label']} | {row['dense']['epochs']:g} | {row['seed']} | {100 * a['learned']:.1f} | "
            f"{100 * a['random']:.1f} | {percent_se(a, 'learned_minus_random')} | {shares} % | "
            f"{'yes' if timesformer_passes(row) else 'no'} |"
        )
    lines += [
        "",
        "| round | recipe | dense epochs | seeds run | mean clean | verdict |",
        "|---:|---|---:|---|---:|---|",
    ]
    known = {recipe for recipes in TIMESFORMER_ROUNDS.values() for recipe in recipes}
    for row in rows:
        if (row["label"], row["dense"]["epochs"]) not in known:
            raise ValueError(
                f"{row['path']}: {row['label']!r} after {row['dense']['epochs']:g} dense epochs is not a "
                "recipe of rounds 15-16"
            )
    decision = None
    for round_number, recipes in TIMESFORMER_ROUNDS.items():
        round_rows = [row for row in rows if (row["label"], row["dense"]["epochs"]) in recipes]
        summaries, chosen = timesformer_verdicts(round_rows, recipes)
        for recipe in sorted(summaries, key=lambda recipe: (recipe["label"], recipe["dense_epochs"])):
            clean = "–" if recipe["clean"] is None else f"{100 * recipe['clean']:.1f}"
            if recipe["clean"] is not None and recipe["clean_se"] is not None:
                clean += f" ± {100 * recipe['clean_se']:.1f}"
            lines.append(
                f"| {round_number} | {recipe['label']} | {recipe['dense_epochs']:g} | "
                f"{', '.join(map(str, sorted(recipe['seeds']))) or '–'} | {clean} | {recipe['verdict']} |"
            )
        if decision is None:
            if chosen:
                decision = (
                    f"Chosen (round {round_number}): {chosen['label']} after a dense phase of "
                    f"{chosen['dense_epochs']:g} epochs ({100 * chosen['clean']:.1f} % mean validation clean "
                    "accuracy)."
                )
            elif not all(recipe["verdict"].startswith("fails") for recipe in summaries):
                decision = f"Nothing chosen yet: recipes of round {round_number} are still to run."
    no_recipe = (
        "No recipe passes: by the rule, step 5 reports TimeSformer-MoE as not a working mixture at this scale and "
        "trains no defense row on it."
    )
    return lines + ["", decision or no_recipe]
