"""The demo's spread over seeds: reads the ``summary.json`` of several ``hf-videomoe demo --seed S`` runs (default
settings, reproducible mode), writes their mean and sd per model to ``hf_videomoe/demo_seeds.json`` (the range a demo
run says it falls inside or not) and prints the per-seed table of docs/DEMO_SEEDS.md.

    python scripts/demo_seeds.py outputs/demo-seed0 outputs/demo-seed1 outputs/demo-seed2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_videomoe.demo import DEMO_SEEDS_FILE, demo_metrics, seed_range


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="output folders of `hf-videomoe demo --seed S`")
    p.add_argument("--output", type=Path, default=DEMO_SEEDS_FILE)
    args = p.parse_args(argv)
    summaries = [json.loads((run / "summary.json").read_text()) for run in args.runs]
    for run, summary in zip(args.runs, summaries):
        if not summary.get("default_settings") or not summary.get("reproducibility", {}).get("complete"):
            raise SystemExit(f"{run}: not a default-settings demo run in complete reproducible mode")
    record = seed_range(summaries)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print("| seed | model | clean | worst case | learned − random routing | weights_sha256 |")
    print("|---:|---|---:|---:|---:|---|")
    methods = {"MoE (no AT)": "moe", "MoE + PGD-AT": "pgd-at", "MoE + J-TLAT": "j-tlat"}
    for summary in summaries:
        for name, row in summary["results"].items():
            m = demo_metrics(row)
            print(
                f"| {summary['seed']} | {name} | {100 * m['clean']:.1f} | {100 * m['worst_case']:.1f} | "
                f"{100 * m.get('learned_minus_random', float('nan')):+.1f} | "
                f"`{summary['weights_sha256'][methods[name]][:16]}` |"
            )
    print()
    print("| model | clean | worst case | learned − random routing |")
    print("|---|---:|---:|---:|")
    for name, stats in record["range"].items():
        cells = [
            f"{100 * stats[k]['mean']:.1f} ± {100 * stats[k]['sd']:.1f}"
            for k in ("clean", "worst_case", "learned_minus_random")
            if k in stats
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
