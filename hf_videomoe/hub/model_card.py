"""Model cards for robust video MoE checkpoints: ``model-index`` robustness metrics, cost, plots, flags, reproduction."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..evaluation.formatting import format_eps, norm_symbol
from ..evaluation.report import RobustnessReport
from .card_snippets import reproduce_section, usage_section
from .checkpoint_files import is_hub_id

__all__ = ["CARD_TAGS", "build_model_card", "metrics_from_model_card", "report_metrics"]

#: Tags every robustness card carries.
CARD_TAGS = ("video-classification", "mixture-of-experts", "adversarial-robustness", "hf_videomoe")
TASK_TYPE = "video-classification"
TASK_NAME = "Video Classification"
CLEAN_CONFIG = "clean"
WORST_CASE_CONFIG = "worst-case"

_PLOT_CAPTIONS = {
    "eps_sweep": "Robust accuracy vs ε, every attack",
    "expert_usage": "Expert usage per MoE layer, clean vs adversarial",
    "perturbation_energy": "Per-frame perturbation energy of each attack",
}

_CITATION = """@inproceedings{wang2026achilles,
  title     = {Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts},
  author    = {Wang and others},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026},
  eprint    = {2602.01369},
  archivePrefix = {arXiv}
}"""


# Enough to stop emphasis, links / images (no "[" or "]"), code spans, headings, table cells and strikethrough;
# "_" only where it could open or close emphasis (GFM ignores intraword underscores, as in `lipschitz_weight`).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]#|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_LIST_MARKER = re.compile(r"^(?:([-+])|(\d+)([.)]))(?=\s)")


def markdown_text(value: Any) -> str:
    """User text made inert inside a Markdown line: one line (newlines become spaces), Markdown punctuation
    backslash-escaped and HTML brackets / ampersands as entities, so a name cannot add a heading, a link or markup."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    # A leading "- " or "1. " would start a list: "\-" and "1\." are the Markdown escapes.
    return _LIST_MARKER.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), text)


def _check_metrics(report: RobustnessReport) -> None:
    """Refuse to publish an accuracy that is not a finite number in [0, 1] (a card would show "-300.0 %" or write
    ``.nan`` into its model-index), nor one from a report that fails its own validation (an edited report.json)."""
    report.validate()
    metrics = {"clean_accuracy": report.clean_accuracy, "worst_case_accuracy": report.worst_case_accuracy}
    metrics.update({f"robust_accuracy[{attack!r}]": value for attack, value in report.robust_accuracy.items()})
    for attack in report.attacks:
        if attack not in report.robust_accuracy:
            raise ValueError(f"The report lists attack {attack!r} but has no robust_accuracy for it.")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(
                f"Cannot build a model card from a report whose {name} is {value!r}: accuracies must be finite numbers "
                "in [0, 1]. Was the report edited, or the evaluation interrupted?"
            )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _dataset_type(dataset_name: str) -> str:
    return dataset_name.strip().lower().replace(" ", "-").replace("_", "-")


def report_metrics(report: RobustnessReport) -> dict[str, Any]:
    """The metrics a robustness card publishes, in the structure [`metrics_from_model_card`] returns:
    ``{"clean_accuracy": float, "worst_case_accuracy": float, "robust_accuracy": {attack: float}}``."""
    out = {
        "clean_accuracy": report.clean_accuracy,
        "worst_case_accuracy": report.worst_case_accuracy,
        "robust_accuracy": dict(report.robust_accuracy),
    }
    others = _other_budgets(report)
    if others:  # attacks at other budgets than the headline: a worst case per budget, key "worst-case@<norm>:<eps>"
        out["worst_case_by_budget"] = {f"{WORST_CASE_CONFIG}@{key}": entry["accuracy"] for key, entry in others.items()}
    return out


def _other_budgets(report: RobustnessReport) -> dict[str, dict[str, Any]]:
    headline = report.worst_case_attacks
    return {k: e for k, e in report.worst_case_by_budget.items() if list(e["attacks"]) != headline}


def _eval_results(report: RobustnessReport, dataset_name: str, dataset_type: str, dataset_split: str | None):
    common = dict(
        task_type=TASK_TYPE,
        task_name=TASK_NAME,
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        metric_type="accuracy",
    )
    eps_label = f"{norm_symbol(report.norm)} ε={format_eps(report.eps, report.norm)}"
    results = [
        EvalResult(
            **common,
            metric_value=float(report.worst_case_accuracy),
            metric_name=f"Worst-case robust accuracy ({len(report.worst_case_attacks)} attacks, {eps_label})",
            metric_config=WORST_CASE_CONFIG,
            metric_args={
                "attacks": report.worst_case_attacks,
                "norm": report.norm,
                "eps": float(report.eps),
                "num_samples": int(report.num_samples),
                "seed": report.seed,
            },
        ),
        EvalResult(
            **common,
            metric_value=float(report.clean_accuracy),
            metric_name="Clean accuracy",
            metric_config=CLEAN_CONFIG,
            metric_args={"num_samples": int(report.num_samples)},
        ),
    ]
    for attack in report.attacks:
        settings = report.attack_settings.get(attack, {})
        args: dict[str, Any] = {
            "attack": settings.get("name", attack),
            "norm": settings.get("norm", report.norm),
            "eps": float(settings.get("eps", report.eps)),
        }
        for key in ("steps", "step_size", "seed", "restarts"):
            value = settings.get(key)
            if isinstance(value, (int, float, str, bool)):
                args[key] = value
        args["num_samples"] = int(report.num_samples)
        name = f"Robust accuracy ({report.attack_label(attack)})"
        if report.is_cumulative(attack):  # accuracy after this attack and every earlier one, not under it alone
            args["mode"] = "cascade"
            name = f"Robust accuracy after {report.attack_label(attack)} (cascade: with every earlier attack)"
        results.append(
            EvalResult(
                **common,
                metric_value=float(report.robust_accuracy[attack]),
                metric_name=name,
                metric_config=attack,
                metric_args=args,
            )
        )
    for key, entry in _other_budgets(report).items():  # never one worst case across two budgets
        label = f"{norm_symbol(entry['norm'])} ε={format_eps(entry['eps'], entry['norm'])}"
        results.append(
            EvalResult(
                **common,
                metric_value=float(entry["accuracy"]),
                metric_config=f"{WORST_CASE_CONFIG}@{key}",
                metric_name=f"Worst-case robust accuracy ({len(entry['attacks'])} attacks, {label})",
                metric_args={
                    "attacks": list(entry["attacks"]),
                    "norm": entry["norm"],
                    "eps": float(entry["eps"]),
                    "num_samples": int(report.num_samples),
                    "seed": report.seed,
                },
            )
        )
    return results


def metrics_from_model_card(card: ModelCard | str | os.PathLike) -> dict[str, Any]:
    """Read the robustness metrics back from a card built by [`build_model_card`].

    Args:
        card: a ``ModelCard``, or anything ``ModelCard.load`` accepts (a README path, a repo id).

    Returns:
        ``{"clean_accuracy": float, "worst_case_accuracy": float, "robust_accuracy": {attack: float}}`` (the same
        structure as [`report_metrics`]).
    """
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card)
    results = getattr(card.data, "eval_results", None) or []
    out: dict[str, Any] = {"clean_accuracy": None, "worst_case_accuracy": None, "robust_accuracy": {}}
    for result in results:
        if result.metric_type != "accuracy" or result.task_type != TASK_TYPE:
            continue
        if result.metric_config == CLEAN_CONFIG:
            out["clean_accuracy"] = result.metric_value
        elif result.metric_config == WORST_CASE_CONFIG:
            out["worst_case_accuracy"] = result.metric_value
        elif str(result.metric_config).startswith(f"{WORST_CASE_CONFIG}@"):
            out.setdefault("worst_case_by_budget", {})[result.metric_config] = result.metric_value
        elif result.metric_config:
            out["robust_accuracy"][result.metric_config] = result.metric_value
    if out["clean_accuracy"] is None and out["worst_case_accuracy"] is None and not out["robust_accuracy"]:
        raise ValueError("The model card has no hf_videomoe robustness metrics in its model-index.")
    return out


def _recipe_section(training_recipe: Mapping[str, Any] | None) -> str:
    if not training_recipe:
        return "## Training recipe\n\nNot recorded."
    rows = ["| Setting | Value |", "|---|---|"]
    for key, value in training_recipe.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=isinstance(value, dict))
        rows.append(f"| {markdown_text(key)} | {markdown_text(value)} |")
    return "## Training recipe\n\n" + "\n".join(rows)


def _plots_section(plots: Mapping[str, Any] | None, plots_relative_to: str | os.PathLike | None) -> str:
    """Image links relative to ``plots_relative_to`` when given (the folder that is uploaded), else absolute paths
    that [`RobustnessModelCard.save`] rewrites relative to wherever the card is written."""
    if not plots:
        return ""
    lines = ["## Plots", ""]
    for name, path in plots.items():
        path = Path(path).resolve()
        if plots_relative_to is not None:
            try:
                link = path.relative_to(Path(plots_relative_to).resolve()).as_posix()
            except ValueError:
                link = path.name
        else:
            link = path.as_posix()
        caption = _PLOT_CAPTIONS.get(name, name.replace("_", " "))
        lines.append(f"**{caption}**\n\n![{caption}]({link})\n")
    return "\n".join(lines).rstrip()


_ABSOLUTE_IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()<?(/[^)\n>]+)>?(\))")


class RobustnessModelCard(ModelCard):
    """A ``huggingface_hub.ModelCard`` whose local image links resolve wherever the card is written.

    [`build_model_card`] links plots by absolute path unless told the folder the card will live in; ``save`` rewrites
    those links relative to the saved file, so ``card.save("any/folder/README.md")`` shows its images.
    """

    def _with_links(self, link_for):
        original = self.content

        def rewrite(match: re.Match) -> str:
            link = link_for(match.group(2))
            return match.group(1) + (f"<{link}>" if " " in link else link) + match.group(3)

        self.content = _ABSOLUTE_IMAGE_LINK.sub(rewrite, original)
        return original

    def save(self, filepath) -> None:
        folder = Path(filepath).resolve().parent
        original = self._with_links(lambda path: Path(os.path.relpath(path, folder)).as_posix())
        try:
            super().save(filepath)
        finally:
            self.content = original

    def push_to_hub(self, *args, **kwargs):
        """``ModelCard.push_to_hub`` uploads the README alone: local plot paths become bare file names (upload the
        plots beside it, or use [`push_robust_checkpoint`], which uploads card, plots and weights in one commit)."""
        original = self._with_links(lambda path: Path(path).name)
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            self.content = original


def build_model_card(
    report: RobustnessReport,
    model_name: str | None = None,
    *,
    base_model: str | None = None,
    dataset_name: str | None = None,
    dataset_type: str | None = None,
    dataset_split: str | None = "test",
    dataset_kwargs: Mapping[str, Any] | None = None,
    training_recipe: Mapping[str, Any] | None = None,
    plots: Mapping[str, Any] | None = None,
    plots_relative_to: str | os.PathLike | None = None,
    repo_id: str | None = None,
    license: str | None = "apache-2.0",
    tags: Sequence[str] | None = None,
    description: str | None = None,
    reproduce_command: str | None = None,
    model_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Build a Hub model card for a robust video classifier from its [`RobustnessReport`].

    The YAML header carries a ``model-index`` with one ``accuracy`` result per evaluation: the worst case over all
    attacks first (the headline), then clean accuracy, then each attack (``metric_config`` = attack name,
    ``metric_args`` = attack, norm, ε, steps, step size, seed, samples). The body opens with the worst-case number
    and has the robustness table, the ε sweep, the cost table against the dense model of the same shape, the plots
    (relative image links), the reliability flags, the training recipe and the exact command reproducing the numbers.

    Args:
        report: the evaluation to publish.
        model_name: the model's name (the ``model-index`` name and the card title); defaults to ``repo_id``'s name.
        base_model: the Hub id of the checkpoint this model was fine-tuned / upcycled from, if any (a local path is
            left out of the metadata: the Hub links ``base_model`` to a repo).
        dataset_name: pretty dataset name (defaults to ``report.dataset_name`` or ``"MovingShapes"``).
        dataset_type: dataset identifier in ``model-index`` (defaults to a slug of ``dataset_name``).
        dataset_split: the evaluated split.
        dataset_kwargs: ``make_moving_shapes`` arguments (``num_videos``, ``num_frames``, ``image_size``, ``seed``,
            ``difficulty``) used in the reproduction command; for a video folder, ``path`` and the
            ``load_video_folder`` arguments (``num_frames``, ``image_size``, ``layout``, ...).
        training_recipe: training settings to list (method, epochs, ε, λ, γ, learning rate, wall-clock...).
        plots: name → PNG path, e.g. from ``report.plot(folder)``; linked relative to ``plots_relative_to`` (the
            folder the README will live in), else relative to wherever ``card.save(path)`` writes the card.
        repo_id: the Hub repo the card is for (used in the usage / reproduction snippets).
        license: SPDX id of the license.
        tags: extra tags (the robustness tags are always present).
        description: a paragraph under the title.
        reproduce_command: override the generated ``hf-videomoe evaluate`` command.
        model_path: where the model is when there is no ``repo_id`` (a local folder): the usage and reproduction
            snippets load it from there, so they run as written.

    Returns:
        A [`RobustnessModelCard`] (a ``huggingface_hub.ModelCard``); ``card.save("README.md")`` / ``ModelCard.load`` round-trip its metrics
        (see [`metrics_from_model_card`]).
    """
    _check_metrics(report)
    dataset_name = dataset_name or report.dataset_name or "MovingShapes"
    dataset_type = dataset_type or _dataset_type(dataset_name)
    if model_name is None:
        model_name = repo_id.split("/")[-1] if repo_id else (report.model_class or "robust-video-moe")
    # The YAML header is written by huggingface_hub (quoted as needed); the body gets escaped one-line versions.
    model_title, dataset_title = markdown_text(model_name), markdown_text(dataset_name)
    all_tags = list(dict.fromkeys([*CARD_TAGS, *(tags or [])]))
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=None,
        library_name="transformers",
        pipeline_tag="video-classification",
        license=license,
        tags=all_tags,
        metrics=["accuracy"],
        eval_results=_eval_results(report, dataset_name, dataset_type, dataset_split),
    )

    moe_word = "Mixture-of-Experts " if report.is_moe else ""
    intro = description or (
        f"{model_title} is a {moe_word}video classifier ({report.model_type or report.model_class}) evaluated for "
        f"adversarial robustness on {dataset_title} with "
        "`hf_videomoe`, following *Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts* "
        "(Wang et al., ICLR 2026, [arXiv:2602.01369](https://arxiv.org/abs/2602.01369))."
    )
    model_path = None if model_path is None else str(model_path)
    usage = usage_section(report, repo_id, model_path)

    robustness = "## Adversarial robustness\n\n" + report.accuracy_table()
    robustness += (
        "\n\nA sample counts as robust to an attack when it is classified correctly both clean and under that attack; "
        "the worst case counts a sample only if it resists every attack run at its budget (ε)."
    )
    if report.is_moe and report.routing_change:
        robustness += (
            " *Routing change*: 1 − IoU of the selected experts, clean vs adversarial (all MoE layers). *Lips-R*: "
            "MSE(R(x), R(x+δ)) / MSE(x, x+δ) on router probabilities."
        )
    sections = [
        f"# {model_title}",
        "> " + report.headline(),
        intro,
        robustness,
    ]
    routing = report.routing_table()
    if routing:
        sections.append(
            "## Routing relevance\n\nDoes the learned routing matter? A mixture whose routing can be replaced by random "
            "routing without loss is not a mixture, and router or expert results on it say nothing about MoE.\n\n"
            + routing
        )
    if report.eps_sweep:
        sections.append("## Robust accuracy vs ε\n\n" + report.sweep_table())
    cost = report.cost_table()
    if cost:
        saving = report.flops_saving
        note = (
            f"\n\nThe sparse model needs {100 * saving:.1f} % fewer FLOPs than the dense one."
            if saving and saving > 0
            else ""
        )
        sections.append(
            "## Inference cost\n\nForward FLOPs per clip (multiply-add = 2) and parameters, next to the dense model "
            "of the same shape (same config without experts).\n\n" + cost + note
        )
    plots_md = _plots_section(plots, plots_relative_to)
    if plots_md:
        sections.append(plots_md)
    sections.append("## Reliability checks\n\n" + report.flags_markdown())
    sections.append(_recipe_section(training_recipe))
    sections.append(usage)  # installation and loading first: the reproduction needs the package too
    sections.append(reproduce_section(report, repo_id, dataset_name, dataset_kwargs, reproduce_command, model_path))
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    if versions:
        sections.append(f"## Software\n\nEvaluated with {versions}.")
    sections.append(f"## Citation\n\n```bibtex\n{_CITATION}\n```")
    body = "\n\n".join(sections) + "\n"
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
    return RobustnessModelCard(content)
