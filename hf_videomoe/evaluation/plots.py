"""PNG plots of a robustness report (matplotlib with the non-interactive Agg backend).

Imports go one way: `RobustnessReport.plot` calls this module, which never imports the report module; it reads a
report through [`PlottableReport`], the few fields the plots use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

from .formatting import format_eps, norm_symbol

__all__ = ["PlottableReport", "plot_eps_sweep", "plot_expert_usage", "plot_perturbation_energy", "plot_report"]


class PlottableReport(Protocol):
    """What the plots read from a [`RobustnessReport`] (see its attributes)."""

    clean_accuracy: float
    num_samples: int
    eps: float
    norm: str
    eps_sweep: dict[str, dict[float, float]]
    expert_usage: dict[str, list[list[float]]]
    perturbation_energy: dict[str, list[float]]


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        try:
            matplotlib.use("Agg", force=True)
        except Exception:  # pragma: no cover - backend switch refused (e.g. inside a running GUI loop)
            pass
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def saved_figure(path: str | os.PathLike, dpi: int, *args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` inside the block; laid out, saved to ``path`` and closed after it."""
    plt = _pyplot()
    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_eps_sweep(report: PlottableReport, path: str | os.PathLike, dpi: int = 120) -> Path | None:
    """Robust accuracy vs ε, one line per attack, clean accuracy as a dashed line. ``None`` without a sweep."""
    if not report.eps_sweep:
        return None
    with saved_figure(path, dpi, figsize=(6, 4)) as (_, ax):
        for attack, curve in report.eps_sweep.items():
            eps = sorted(curve)
            ax.plot(
                [e * 255 if report.norm == "linf" else e for e in eps],
                [100 * curve[e] for e in eps],
                marker="o",
                label=attack,
            )
        ax.axhline(100 * report.clean_accuracy, color="gray", linestyle="--", label="clean")
        ax.set_xlabel(f"ε ({'×1/255, ' if report.norm == 'linf' else ''}{norm_symbol(report.norm)})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(
            f"Robust accuracy vs ε ({report.num_samples} samples, main ε={format_eps(report.eps, report.norm)})"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return Path(path)


def plot_expert_usage(report: PlottableReport, path: str | os.PathLike, dpi: int = 120) -> Path | None:
    """Grouped bars per MoE layer: fraction of routing decisions per expert, clean vs each attack."""
    if not report.expert_usage or "clean" not in report.expert_usage:
        return None
    groups = ["clean"] + [a for a in report.expert_usage if a != "clean"]
    num_layers = len(report.expert_usage["clean"])
    num_experts = len(report.expert_usage["clean"][0]) if num_layers else 0
    if num_layers == 0 or num_experts == 0:
        return None
    cols = min(num_layers, 4)
    rows = (num_layers + cols - 1) // cols
    width = 0.8 / len(groups)
    with saved_figure(path, dpi, rows, cols, figsize=(3.2 * cols + 1, 2.8 * rows), squeeze=False, sharey=True) as (
        fig,
        axes,
    ):
        for layer in range(rows * cols):
            ax = axes[layer // cols][layer % cols]
            if layer >= num_layers:
                ax.axis("off")
                continue
            for g, group in enumerate(groups):
                fractions = report.expert_usage[group][layer]
                xs = [e - 0.4 + width * (g + 0.5) for e in range(num_experts)]
                ax.bar(xs, fractions, width=width, label=group)
            ax.set_xticks(range(num_experts))
            ax.set_xlabel("expert")
            ax.set_title(f"MoE layer {layer}")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("fraction of routing decisions")
        axes[0][0].legend(fontsize="small")
        fig.suptitle("Expert usage, clean vs adversarial")
    return Path(path)


def plot_perturbation_energy(report: PlottableReport, path: str | os.PathLike, dpi: int = 120) -> Path | None:
    """Per-frame mean squared L2 norm of δ, one line per attack (where in time each attack spends its budget)."""
    if not report.perturbation_energy:
        return None
    with saved_figure(path, dpi, figsize=(6, 4)) as (_, ax):
        for attack, energy in report.perturbation_energy.items():
            ax.plot(range(len(energy)), energy, marker="o", label=attack)
        ax.set_xlabel("frame")
        ax.set_ylabel("mean ‖δ_f‖² per clip")
        ax.set_title("Perturbation energy per frame")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return Path(path)


def plot_report(report: PlottableReport, output_dir: str | os.PathLike, dpi: int = 120) -> dict[str, Path]:
    """All plots of ``report`` as PNG files in ``output_dir``; returns name → path for those with data."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fn in (
        ("eps_sweep", plot_eps_sweep),
        ("expert_usage", plot_expert_usage),
        ("perturbation_energy", plot_perturbation_energy),
    ):
        out = fn(report, output_dir / f"{name}.png", dpi=dpi)
        if out is not None:
            paths[name] = out
    return paths
