"""The demo's recorded seed range: what a default ``hf-videomoe demo`` run is compared with at its end.

``scripts/demo_seeds.py`` runs the default demo on seeds 0, 1, 2 in reproducible mode and writes their mean and spread
per model to ``hf_videomoe/demo_seeds.json`` ([`seed_range`]); every default run then says, model by model, whether
its figures fall inside mean ± 2 sd ([`seed_range_verdict`]; docs/DEMO_SEEDS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

#: Mean and spread of the demo's default run over seeds 0, 1, 2 in reproducible mode (docs/DEMO_SEEDS.md).
DEMO_SEEDS_FILE = Path(__file__).with_name("demo_seeds.json")
RANGE_METRICS = ("clean", "worst_case", "learned_minus_random")


def demo_metrics(row: dict) -> dict[str, float]:
    """The figures a seed range is kept for: clean and worst-case accuracy, learned minus random routing."""
    relevance = row.get("routing_relevance") or {}
    out = {"clean": row["clean"], "worst_case": row["worst_case"]}
    if relevance.get("random") is not None:
        out["learned_minus_random"] = row["clean"] - relevance["random"]
    return out


def seed_range_verdict(summary: dict, reproducible: bool = True, path: Path = DEMO_SEEDS_FILE) -> str:
    """Whether this run's figures fall inside the recorded seeds' mean ± 2 sd, model by model, as text."""
    try:
        recorded = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "No recorded seed range to compare with (hf_videomoe/demo_seeds.json)."
    ranges = recorded.get("range", {})
    lines = [
        f"Against seeds {', '.join(map(str, recorded.get('seeds', [])))} of the default demo (mean ± 2 sd, "
        "docs/DEMO_SEEDS.md)" + ("" if reproducible else "; this run was not in reproducible mode") + ":"
    ]
    outside = 0
    for name, row in summary.items():
        cells = []
        for metric, value in demo_metrics(row).items():
            stats = ranges.get(name, {}).get(metric)
            if not stats:
                continue
            low, high = stats["mean"] - 2 * stats["sd"], stats["mean"] + 2 * stats["sd"]
            inside = low - 1e-9 <= value <= high + 1e-9
            outside += not inside
            cells.append(
                f"{metric} {100 * value:.1f} {'in' if inside else 'OUTSIDE'} [{100 * low:.1f}, {100 * high:.1f}]"
            )
        if cells:
            lines.append(f"  {name}: " + "; ".join(cells))
    lines.append(
        "This run falls inside the recorded range."
        if not outside
        else f"{outside} figure(s) fall outside the recorded range."
    )
    return "\n".join(lines)


def seed_range(summaries: list[dict]) -> dict:
    """From the ``summary.json`` of several seeds' default runs: per model, the mean and sample sd of each figure in
    ``RANGE_METRICS`` (what `seed_range_verdict` compares a run with; ``scripts/demo_seeds.py`` writes it)."""
    ranges: dict[str, dict] = {}
    for name in summaries[0]["results"]:
        values: dict[str, list[float]] = {}
        for summary in summaries:
            for metric, value in demo_metrics(summary["results"][name]).items():
                values.setdefault(metric, []).append(value)
        ranges[name] = {}
        for metric, xs in values.items():
            mean = sum(xs) / len(xs)
            sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
            ranges[name][metric] = {"mean": mean, "sd": sd, "min": min(xs), "max": max(xs)}
    return {
        "seeds": [s.get("seed") for s in summaries],
        "range": ranges,
        "weights_sha256": {str(s.get("seed")): s.get("weights_sha256") for s in summaries},
    }
