"""Model cards for robust video MoE checkpoints: ``model-index`` robustness metrics, cost, plots, flags, reproduction.

The ``model-index`` entries live in `card_metrics` (re-exported here), the card's code blocks in `card_snippets`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..evaluation.report import RobustnessReport
from .card_metrics import check_card_metrics, eval_results, metrics_from_model_card, report_metrics
from .card_snippets import reproduce_section, usage_section
from .checkpoint_files import is_hub_id

__all__ = [
    "CARD_TAGS",
    "ModelCardOptions",
    "RobustnessModelCard",
    "build_model_card",
    "metrics_from_model_card",
    "report_metrics",
]

#: Tags every robustness card carries.
CARD_TAGS = ("video-classification", "mixture-of-experts", "adversarial-robustness", "hf_videomoe")
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


def _dataset_type(dataset_name: str) -> str:
    return dataset_name.strip().lower().replace(" ", "-").replace("_", "-")


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


@dataclass
class ModelCardOptions:
    """What a robustness card says besides its [`RobustnessReport`]: the keyword arguments of [`build_model_card`].

    Args:
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
        plots_relative_to: see ``plots``.
        repo_id: the Hub repo the card is for (used in the usage / reproduction snippets).
        license: SPDX id of the license.
        tags: extra tags (the robustness tags are always present).
        description: a paragraph under the title.
        reproduce_command: override the generated ``hf-videomoe evaluate`` command.
        model_path: where the model is when there is no ``repo_id`` (a local folder): the usage and reproduction
            snippets load it from there, so they run as written.
    """

    base_model: str | None = None
    dataset_name: str | None = None
    dataset_type: str | None = None
    dataset_split: str | None = "test"
    dataset_kwargs: Mapping[str, Any] | None = None
    training_recipe: Mapping[str, Any] | None = None
    plots: Mapping[str, Any] | None = None
    plots_relative_to: str | os.PathLike | None = None
    repo_id: str | None = None
    license: str | None = "apache-2.0"
    tags: Sequence[str] | None = None
    description: str | None = None
    reproduce_command: str | None = None
    model_path: str | os.PathLike | None = None


def build_model_card(
    report: RobustnessReport,
    model_name: str | None = None,
    *,
    options: ModelCardOptions | None = None,
    **fields: Any,
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
        options: what the card says besides the report (dataset, recipe, plots, repo, license, ...), see
            [`ModelCardOptions`].
        fields: the fields of [`ModelCardOptions`] as keywords, e.g. ``build_model_card(report, repo_id="me/m",
            plots=plots)``; they override those of ``options``.

    Returns:
        A [`RobustnessModelCard`] (a ``huggingface_hub.ModelCard``); ``card.save("README.md")`` / ``ModelCard.load``
        round-trip its metrics (see [`metrics_from_model_card`]).
    """
    options = _with_fields(options or ModelCardOptions(), fields)
    check_card_metrics(report)
    dataset_name = options.dataset_name or report.dataset_name or "MovingShapes"
    dataset_type = options.dataset_type or _dataset_type(dataset_name)
    if model_name is None:
        model_name = options.repo_id.split("/")[-1] if options.repo_id else (report.model_class or "robust-video-moe")
    card_data = ModelCardData(
        model_name=model_name,
        base_model=options.base_model if is_hub_id(options.base_model) else None,
        datasets=None,
        library_name="transformers",
        pipeline_tag="video-classification",
        license=options.license,
        tags=list(dict.fromkeys([*CARD_TAGS, *(options.tags or [])])),
        metrics=["accuracy"],
        eval_results=eval_results(report, dataset_name, dataset_type, options.dataset_split),
    )
    body = _card_body(report, model_name, dataset_name, options)
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
    return RobustnessModelCard(content)


def _with_fields(options: ModelCardOptions, fields: Mapping[str, Any]) -> ModelCardOptions:
    """``options`` with ``fields`` replaced, refusing unknown names the way a keyword-only signature would."""
    known = {field.name for field in dataclasses.fields(ModelCardOptions)}
    for name in fields:
        if name not in known:
            raise TypeError(f"build_model_card() got an unexpected keyword argument {name!r}")
    return dataclasses.replace(options, **fields)


def _card_body(report: RobustnessReport, model_name: str, dataset_name: str, options: ModelCardOptions) -> str:
    """The Markdown under the YAML header, section by section."""
    # The YAML header is written by huggingface_hub (quoted as needed); the body gets escaped one-line versions.
    model_title, dataset_title = markdown_text(model_name), markdown_text(dataset_name)
    moe_word = "Mixture-of-Experts " if report.is_moe else ""
    intro = options.description or (
        f"{model_title} is a {moe_word}video classifier ({report.model_type or report.model_class}) evaluated for "
        f"adversarial robustness on {dataset_title} with "
        "`hf_videomoe`, following *Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts* "
        "(Wang et al., ICLR 2026, [arXiv:2602.01369](https://arxiv.org/abs/2602.01369))."
    )
    model_path = None if options.model_path is None else str(options.model_path)
    usage = usage_section(report, options.repo_id, model_path)
    sections = [f"# {model_title}", "> " + report.headline(), intro, _robustness_section(report)]
    routing = report.routing_table()
    if routing:
        sections.append(
            "## Routing relevance\n\nDoes the learned routing matter? A mixture whose routing can be replaced by "
            "random routing without loss is not a mixture, and router or expert results on it say nothing about "
            "MoE.\n\n" + routing
        )
    if report.eps_sweep:
        sections.append("## Robust accuracy vs ε\n\n" + report.sweep_table())
    cost = _cost_section(report)
    if cost:
        sections.append(cost)
    plots_md = _plots_section(options.plots, options.plots_relative_to)
    if plots_md:
        sections.append(plots_md)
    sections.append("## Reliability checks\n\n" + report.flags_markdown())
    sections.append(_recipe_section(options.training_recipe))
    sections.append(usage)  # installation and loading first: the reproduction needs the package too
    sections.append(
        reproduce_section(
            report, options.repo_id, dataset_name, options.dataset_kwargs, options.reproduce_command, model_path
        )
    )
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    if versions:
        sections.append(f"## Software\n\nEvaluated with {versions}.")
    sections.append(f"## Citation\n\n```bibtex\n{_CITATION}\n```")
    return "\n\n".join(sections) + "\n"


def _robustness_section(report: RobustnessReport) -> str:
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
    return robustness


def _cost_section(report: RobustnessReport) -> str:
    """The FLOPs / parameters table against the dense model of the same shape; empty when the report has none."""
    cost = report.cost_table()
    if not cost:
        return ""
    saving = report.flops_saving
    note = (
        f"\n\nThe sparse model needs {100 * saving:.1f} % fewer FLOPs than the dense one."
        if saving and saving > 0
        else ""
    )
    return (
        "## Inference cost\n\nForward FLOPs per clip (multiply-add = 2) and parameters, next to the dense model "
        "of the same shape (same config without experts).\n\n" + cost + note
    )
