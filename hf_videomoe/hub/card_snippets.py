"""The code a model card shows: installing and loading the model ("Usage") and re-running its evaluation ("How to
reproduce these numbers"), written so that every block runs as written with the run's own settings."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from ..evaluation.report import RobustnessReport

__all__ = ["cli_command", "reproduce_section", "usage_section"]


def _is_moving_shapes(dataset_name: str) -> bool:
    return dataset_name.lower().replace("-", "").replace("_", "").replace(" ", "") == "movingshapes"


# `hf-videomoe`'s MovingShapes defaults (commands.common.DataArguments), for cards whose data settings were not recorded.
_UNRECORDED_MOVING_SHAPES = {"num_videos": 800, "seed": 0, "difficulty": "easy"}


def _moving_shapes_kwargs(report: RobustnessReport, dataset_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``make_moving_shapes`` arguments, ``num_videos`` first: the given ones, with frames / size filled in from the
    evaluated clips and the command line's defaults for anything else not recorded."""
    kwargs = dict(dataset_kwargs or {})
    if report.input_shape:
        kwargs.setdefault("num_frames", report.input_shape[0])
        kwargs.setdefault("image_size", report.input_shape[-1])
    for key, value in _UNRECORDED_MOVING_SHAPES.items():
        kwargs.setdefault(key, value)
    return {"num_videos": kwargs.pop("num_videos"), **kwargs}


def _eps_text(value: float) -> str:
    """``8/255`` for a whole number of grey levels, else the float (the way every ε flag of the CLI reads it)."""
    levels = round(float(value) * 255)
    return f"{levels}/255" if levels and levels / 255 == float(value) else repr(float(value))


def _model_location(repo_id: str | None, model_path: str | None) -> str:
    return repo_id or model_path or "path/to/checkpoint"


def cli_command(
    report: RobustnessReport, repo_id: str | None, dataset_name: str, dataset_kwargs, model_path: str | None = None
) -> tuple[str, bool]:
    """The ``hf-videomoe evaluate`` command and whether it reproduces every attack setting exactly."""
    lines = []
    model_dir = "checkpoint" if repo_id else shlex.quote(_model_location(None, model_path))
    if repo_id:
        lines.append(f"hf download {repo_id} --local-dir {model_dir}")
    names = [report.attack_arguments.get(a, {}).get("name", a) for a in report.attacks]
    cmd = [
        f"hf-videomoe evaluate --model {model_dir}",
        f"--attacks {','.join(names)}",
        f"--eps {_eps_text(report.eps)} --norm {report.norm}",
    ]
    cli_steps = report.steps if report.steps is not None else 10
    cmd.append(f"--steps {cli_steps}")
    cmd.append(f"--seed {report.seed} --batch-size {report.batch_size or 8} --num-samples {report.num_samples}")
    if report.eps_sweep:
        values = sorted({e for curve in report.eps_sweep.values() for e in curve})
        cmd.append("--eps-sweep " + ",".join(_eps_text(e) for e in values))
    if report.mode != "full":
        cmd.append(
            f"--mode {report.mode}"
            + (f" --exact-attacks {','.join(report.exact_attacks)}" if report.exact_attacks else "")
        )
    if _is_moving_shapes(dataset_name):
        kw = _moving_shapes_kwargs(report, dataset_kwargs)
        cmd.append("--dataset moving-shapes")
        for key, flag in (
            ("num_videos", "--num-videos"),
            ("num_frames", "--num-frames"),
            ("image_size", "--image-size"),
            ("seed", "--data-seed"),
            ("difficulty", "--difficulty"),
        ):
            if key in kw:
                cmd.append(f"{flag} {kw[key]}")
    elif dataset_kwargs and dataset_kwargs.get("path"):
        cmd.append(f"--dataset {shlex.quote(str(dataset_kwargs['path']))}")
        for key, value in dataset_kwargs.items():
            if key != "path" and value is not None:
                cmd.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    else:
        cmd.append(f"--dataset {shlex.quote(' '.join(str(dataset_name).split()))}")
    lines.append(" \\\n    ".join(cmd))
    # The CLI gives every gradient attack the shared eps / steps / seed and Square its default budget.
    shared = {"eps": report.eps, "norm": report.norm, "seed": report.seed}
    exact = not report.steps_check and list(report.eps_sweep) in ([], list(report.attacks))
    exact = (
        exact
        and len(names) == len(set(names))
        and all(
            args.get("name") == label
            and all(args.get(k) == v for k, v in shared.items())
            and (args.get("steps") == cli_steps if label != "square" else "steps" not in args)
            and set(args) <= {"name", "eps", "norm", "seed", "steps"}
            for label, args in report.attack_arguments.items()
        )
    )
    return "\n".join(lines), exact


def reproduce_section(
    report: RobustnessReport,
    repo_id: str | None,
    dataset_name: str,
    dataset_kwargs: Mapping[str, Any] | None,
    reproduce_command: str | None,
    model_path: str | None = None,
) -> str:
    """The card's "How to reproduce these numbers": the ``hf-videomoe evaluate`` command, the same evaluation in
    Python (exact attack settings; MovingShapes regenerated with the run's generator settings, a video folder read
    from its path) and the recorded attack settings. The model is ``repo_id``, else ``model_path``."""
    model_ref = _model_location(repo_id, model_path)
    exact = True
    if reproduce_command is None:
        reproduce_command, exact = cli_command(report, repo_id, dataset_name, dataset_kwargs, model_path)

    by_name = report.attack_arguments and all("name" in a for a in report.attack_arguments.values())
    if by_name:
        entries = "".join(f"        {label!r}: {args!r},\n" for label, args in report.attack_arguments.items())
        attacks_arg = "{\n" + entries + "    }"
    else:
        attacks_arg = repr(list(report.attacks))
    kwargs = [f"attacks={attacks_arg}", f"eps={report.eps!r}", f"norm={report.norm!r}"]
    if report.steps is not None:
        kwargs.append(f"steps={report.steps}")
    kwargs += [f"seed={report.seed}", f"batch_size={report.batch_size or 8}"]
    if report.mode != "full":
        kwargs.append(
            f"mode={report.mode!r}" + (f", exact_attacks={report.exact_attacks!r}" if report.exact_attacks else "")
        )
    if report.eps_sweep:
        values = sorted({e for curve in report.eps_sweep.values() for e in curve})
        kwargs.append(f"eps_sweep={values!r}")
        swept = list(report.eps_sweep)
        if swept != list(report.attacks):
            kwargs.append(f"sweep_attacks={swept!r}")
    if report.steps_check:
        samples = max(info["num_samples"] for info in report.steps_check.values())
        kwargs.append(f"check_steps=True, check_steps_attacks={list(report.steps_check)!r}")
        kwargs.append(f"check_steps_samples={samples}")
    if _is_moving_shapes(dataset_name):
        data_args = ", ".join(f"{k}={v!r}" for k, v in _moving_shapes_kwargs(report, dataset_kwargs).items())
        data_line = f'dataset = make_moving_shapes({data_args})["test"]'
        data_import = "from hf_videomoe.data import make_moving_shapes\n"
    elif dataset_kwargs and dataset_kwargs.get("path"):
        folder = dict(dataset_kwargs)
        folder_args = "".join(f", {k}={v!r}" for k, v in folder.items() if k != "path")
        data_line = f'dataset = load_video_folder({str(folder["path"])!r}{folder_args}, split="test")'
        data_import = "from hf_videomoe.data import load_video_folder\n"
    else:
        one_line = " ".join(str(dataset_name).split()).replace("`", "'")  # cannot close the code block
        data_line = f"dataset = ...  # the {one_line} test split: columns pixel_values (T, C, H, W in [0, 1]), labels"
        data_import = ""
    snippet = (
        "import hf_videomoe  # registers the MoE model classes\n"
        f"{data_import}"
        "from hf_videomoe.evaluation import evaluate_robustness\n"
        "from transformers import AutoModelForVideoClassification\n\n"
        f"model = AutoModelForVideoClassification.from_pretrained({model_ref!r})\n"
        f"{_dense_wrapper(report, repo_id, model_ref)}"
        f"{data_line}\n"
        f"dataset = dataset.select(range({report.num_samples}))\n"
        f"report = evaluate_robustness(\n    model,\n    dataset,\n    " + ",\n    ".join(kwargs) + ",\n)\n"
        "print(report.to_markdown())"
    )
    note = (
        ""
        if exact
        else (
            "The command line applies `--eps`, `--steps` and `--seed` to every gradient attack (and its default query "
            "budget to Square); some attacks here used other settings, which the Python version reproduces exactly.\n\n"
        )
    )
    settings = json.dumps(report.attack_settings, indent=2, sort_keys=True)
    return (
        "## How to reproduce these numbers\n\n"
        f"```bash\n{reproduce_command}\n```\n\n"
        f"{note}"
        f"In Python (exact settings):\n\n```python\n{snippet}\n```\n\n"
        "Full attack settings (seeds, steps, step sizes) as recorded by the evaluator:\n\n"
        f"<details><summary>attack settings</summary>\n\n```json\n{settings}\n```\n\n</details>"
    )


def _dense_wrapper(report: RobustnessReport, repo_id: str | None, model_ref: str) -> str:
    """For a dense model in a local folder: the line that feeds it [0, 1] pixels normalised as its processor does."""
    if report.is_moe or repo_id:
        return ""
    return (
        "from hf_videomoe.attacks import pixel_space_model\n"
        f"model = pixel_space_model(model, {model_ref!r})  # dense: normalise as its processor does\n"
    )


def usage_section(report: RobustnessReport, repo_id: str | None, model_path: str | None) -> str:
    """How to install the package and run the model (runs as written where the model is)."""
    model_ref = _model_location(repo_id, model_path)
    frames, channels, height, width = (list(report.input_shape or []) + [None] * 4)[:4]
    shape = ", ".join(str(v) for v in (1, frames or 16, channels or 3, height or 224, width or height or 224))
    return (
        "## Usage\n\n"
        "The model classes come with the `hf_videomoe` package: install it, and `import hf_videomoe` before loading "
        "(it registers the architectures with transformers' Auto classes).\n\n"
        "```shell\npip install hf_videomoe\n# or from a source checkout: pip install -e .\n```\n\n"
        "```python\n"
        "import torch\n"
        "import hf_videomoe  # registers the MoE architectures with transformers' Auto classes\n"
        "from transformers import AutoModelForVideoClassification\n\n"
        f"model = AutoModelForVideoClassification.from_pretrained({model_ref!r}).eval()\n"
        f"{_dense_wrapper(report, repo_id, model_ref)}"
        "# pixel_values: float in [0, 1], (batch, frames, channels, height, width); the model normalises inside\n"
        f"pixel_values = torch.rand({shape})\n"
        "with torch.no_grad():\n"
        "    logits = model(pixel_values=pixel_values).logits\n"
        "print(model.config.id2label[int(logits.argmax(-1))])\n"
        "```"
    )
