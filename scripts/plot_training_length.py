"""The training-length curve of docs/PROTOCOL.md ("Registration of 2026-12-07"): worst-case and clean accuracy of MoE AT,
J-TLAT and a J-TLAT ablation against adversarial epochs and against training CPU seconds, from reproduction caches that
differ only in ``--adv-epochs``.

    python scripts/reproduce_paper.py --output-dir results/reproduction2-length-e10 --adv-epochs 10 \\
        --seeds 0 1 2 --defenses moe-at j-tlat --attack-table-seeds --ablations model-attack-pgd
    python scripts/plot_training_length.py results/reproduction2-rebuilt results/reproduction2-length-e10 \\
        results/reproduction2-length-e15 --seeds 0 1 2 --ablation model-attack-pgd --output docs/training_length.png

Prints a Markdown table (mean ± sd over the seeds each point has) and writes the figure; a point needs the row on every
seed named, so a curve never mixes seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows_of(folder: Path, seeds: list[int], ablation: str | None) -> dict[str, dict]:
    """Per row name: its ``adv_epochs`` (from the cache's settings.json) and per-seed worst case, clean, CPU seconds."""
    epochs = json.loads((folder / "settings.json").read_text())["adv_epochs"]
    names = {"moe-at": "MoE AT (PGD-AT)", "j-tlat": "J-TLAT"}
    if ablation:
        names[f"ablation-{ablation}"] = f"J-TLAT, {ablation}"
    out = {}
    for directory, label in names.items():
        results = [folder / f"seed{seed}" / directory / "result.json" for seed in seeds]
        if not all(path.exists() for path in results):
            continue
        loaded = [json.loads(path.read_text()) for path in results]
        out[label] = {
            "epochs": epochs,
            "worst_case": [100 * r["worst_case"] for r in loaded],
            "clean": [100 * r["clean"] for r in loaded],
            "cpu_seconds": [r["train"]["cpu_seconds"] for r in loaded],
        }
    return out


def collect(folders: list[Path], seeds: list[int], ablation: str | None) -> dict[str, list[dict]]:
    """Per row label, its points sorted by epochs."""
    curves: dict[str, list[dict]] = {}
    for folder in folders:
        for label, point in rows_of(folder, seeds, ablation).items():
            curves.setdefault(label, []).append(point)
    return {label: sorted(points, key=lambda p: p["epochs"]) for label, points in curves.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(curves: dict[str, list[dict]]) -> str:
    lines = ["| row | epochs | worst case % | clean % | training CPU s |", "|---|---:|---:|---:|---:|"]
    for label, points in curves.items():
        for p in points:
            cells = [f"{m:.1f} ± {s:.1f}" for m, s in (mean_sd(p["worst_case"]), mean_sd(p["clean"]))]
            lines.append(
                f"| {label} | {p['epochs']:g} | {cells[0]} | {cells[1]} | {mean_sd(p['cpu_seconds'])[0]:.0f} |"
            )
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], output: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for label, points in curves.items():
        for axis, x_key in zip(axes, ("epochs", "cpu_seconds")):
            xs = [p[x_key] if x_key == "epochs" else mean_sd(p[x_key])[0] for p in points]
            for metric, style in (("worst_case", "-o"), ("clean", "--s")):
                means, sds = zip(*(mean_sd(p[metric]) for p in points))
                axis.errorbar(xs, means, yerr=sds, fmt=style, capsize=3, label=f"{label}, {metric.replace('_', ' ')}")
    axes[0].set_xlabel("adversarial epochs")
    axes[1].set_xlabel("training CPU seconds (one thread)")
    axes[0].set_ylabel("accuracy % (mean ± sd over seeds)")
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="reproduction caches, one per --adv-epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation", default=None, help="a J-TLAT ablation to draw beside MoE AT and J-TLAT")
    parser.add_argument("--output", type=Path, default=Path("docs/training_length.png"))
    args = parser.parse_args(argv)
    curves = collect(args.folders, args.seeds, args.ablation)
    if not curves:
        raise SystemExit(
            f"no row has result.json on every one of seeds {args.seeds} in {[str(f) for f in args.folders]}"
        )
    print(markdown_table(curves))
    plot(curves, args.output)
    print(f"\nFigure written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
