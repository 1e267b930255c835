"""``hf-videomoe train``: `transformers.HfArgumentParser` over the data, model and run options and
[`~hf_videomoe.training.AdversarialTrainingArguments`], so every `Trainer` flag (``--bf16``,
``--gradient_checkpointing``, ``--report_to``, ``--eval_strategy``, ...) works unchanged, in both the ``_`` and the
``-`` spelling, next to the command's own options and the short flags it always had (``--eps``, ``--epochs``,
``--batch-size``, ``--resume``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ..moe import EXPERT_INITS, ROUTER_GATES, ROUTER_GRANULARITIES
from ..reproducibility import enable_reproducible_mode, weights_sha256
from ..training import AdversarialTrainingArguments
from .common import EPS_HELP, CLIError, DataArguments, load_dataset, parse_eps, positive_int

__all__ = ["MODEL_TYPES", "ModelArguments", "RunArguments", "build_train_parser", "parse_train_args", "run_train"]

MODEL_TYPES = ("videomae_moe", "timesformer_moe", "videomae")
PROG = "hf-videomoe train"
DESCRIPTION = (
    "Train (optionally adversarially) a video MoE model on MovingShapes or a local video folder. Runs unchanged under "
    "`accelerate launch` (several GPUs or nodes). Every transformers TrainingArguments option is accepted."
)

# The command's defaults where they differ from TrainingArguments' (a short CPU-friendly run, no trackers).
EVAL_STRATEGY_AUTO = "epoch if --eval_attacks else no"
TRAIN_DEFAULTS: dict[str, Any] = dict(
    num_train_epochs=5.0,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,
    learning_rate=1e-3,
    warmup_steps=20,
    weight_decay=0.05,
    eval_strategy=EVAL_STRATEGY_AUTO,
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=10,
    report_to="none",
    remove_unused_columns=False,
    seed=0,
    adv_method="none",
    adv_steps=3,
    eval_attacks=["pgd"],
)
# Short flags the command had before it took every TrainingArguments option: flag -> (destination, type, help).
ALIASES = {
    "--eps": ("adv_eps", parse_eps, f"Alias of --adv_eps: training attack budget, {EPS_HELP}."),
    "--epochs": ("num_train_epochs", float, "Alias of --num_train_epochs."),
    "--resume": ("resume_from_checkpoint", str, "Alias of --resume_from_checkpoint ('true': the last checkpoint)."),
    "--batch-size": (
        "batch_size",
        positive_int,
        "Sets --per_device_train_batch_size and --per_device_eval_batch_size.",
    ),
}
EPS_FIELDS = ("adv_eps", "eval_attack_eps")


@dataclass
class ModelArguments:
    """The model to train: built from scratch, or upcycled from a dense checkpoint."""

    model_type: str = field(
        default="videomae_moe",
        metadata={
            "help": "MoE model to train (built from scratch, or upcycled from --dense-checkpoint), or a dense VideoMAE "
            "baseline.",
            "choices": list(MODEL_TYPES),
        },
    )
    dense_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Dense VideoMAE / TimeSformer checkpoint (local dir or Hub id) to upcycle into the MoE."},
    )
    num_experts: int = field(default=4, metadata={"help": "Experts per MoE layer."})
    top_k: int = field(default=1, metadata={"help": "Experts each routing unit is sent to."})
    granularity: str = field(
        default="token",
        metadata={
            "help": "Routing unit: every token, every frame (its tokens share one decision), the whole clip in every "
            "layer, or 'model' (the paper's: one decision per clip shared by every MoE layer, so expert i is a whole "
            "path).",
            "choices": list(ROUTER_GRANULARITIES),
        },
    )
    router_gate: str = field(
        default="straight_through",
        metadata={
            "help": "How the task loss reaches the router (same forward value for all; see docs/METHOD.md).",
            "choices": list(ROUTER_GATES),
        },
    )
    expert_init: str = field(
        default="drop_upcycling",
        metadata={
            "help": "With --dense-checkpoint: make the upcycled experts differ (Drop-Upcycling re-initialises a different "
            "fraction of each expert's neurons) or keep exact copies ('copy').",
            "choices": list(EXPERT_INITS),
        },
    )
    cluster_router_clips: int = field(
        default=0,
        metadata={
            "help": "With --dense-checkpoint: start every router from k-means clusters of its inputs on this many "
            "training clips (0: random routers). Helps with --granularity model; see docs/METHOD.md."
        },
    )
    expert_init_ratio: float = field(
        default=0.5,
        metadata={"help": "Fraction of neurons re-initialised per expert (drop_upcycling) or relative noise (noise)."},
    )
    patch_size: int = field(default=8, metadata={"help": "Patch size (models built from scratch only)."})
    hidden_size: int = field(default=96, metadata={"help": "Hidden size (models built from scratch only)."})
    num_layers: int = field(default=4, metadata={"help": "Transformer layers (models built from scratch only)."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (models built from scratch only)."})

    def __post_init__(self):
        for name, low in (
            ("num_experts", 1),
            ("top_k", 1),
            ("cluster_router_clips", 0),
            ("patch_size", 1),
            ("hidden_size", 1),
            ("num_layers", 1),
            ("num_heads", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}.")


@dataclass
class RunArguments:
    """Options of the command itself."""

    reproducible: bool = field(
        default=False,
        metadata={
            "help": "Pin torch's, MKL's and numpy's code paths so the run gives the same weights on any x86-64 CPU "
            "(hf_videomoe.reproducibility; may restart the process; slower)."
        },
    )


class _TrainParser(HfArgumentParser):
    """An `HfArgumentParser` whose errors are one line (its usage line lists every TrainingArguments option)."""

    def error(self, message: str):
        """Exit 2 with ``message`` on one line."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_train_parser() -> HfArgumentParser:
    """The ``hf-videomoe train`` parser: data, model and run options plus every `AdversarialTrainingArguments` field,
    with the command's defaults, ε flags that take ``8/255`` and the short aliases of [`ALIASES`]."""
    parser = _TrainParser(
        (DataArguments, ModelArguments, RunArguments, AdversarialTrainingArguments), prog=PROG, description=DESCRIPTION
    )
    parser.set_defaults(**TRAIN_DEFAULTS)
    for action in parser._actions:  # argparse keeps no public handle on its actions
        if action.dest in EPS_FIELDS:
            action.type = parse_eps
            action.help = f"{action.help} Written as {EPS_HELP}."
    recipes = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
    parser.add_argument(
        "--recipe",
        default=argparse.SUPPRESS,
        metavar="NAME_OR_FILE",
        help=f"Apply a recipe's options first (later flags override them): shipped {recipes}, or a "
        "JSON file of option names and values.",
    )
    aliases = parser.add_argument_group("short flags (aliases)")
    for flag, (dest, kind, help_text) in ALIASES.items():
        aliases.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=help_text)
    return parser


def _normalise(namespace: argparse.Namespace, parser: HfArgumentParser) -> None:
    """Turn the parsed flags into dataclass fields: comma-separated attack lists, the automatic eval strategy, one
    --batch-size for both batch sizes, the required --output_dir."""
    if not namespace.output_dir:
        parser.error("the following arguments are required: --output_dir/--output-dir")
    attacks = []
    for item in namespace.eval_attacks or []:
        attacks.extend(name.strip() for name in str(item).split(",") if name.strip())
    namespace.eval_attacks = attacks
    if namespace.eval_strategy == EVAL_STRATEGY_AUTO:
        namespace.eval_strategy = "epoch" if attacks else "no"
    if getattr(namespace, "batch_size", None) is not None:
        namespace.per_device_train_batch_size = namespace.per_device_eval_batch_size = namespace.batch_size


RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def recipe_arguments(name_or_path: str) -> list[str]:
    """The flags a recipe file sets, as command-line words (placed before the user's own, which therefore win).

    ``name_or_path``: a recipe shipped with the package (``ucf101-jtlat``, ``hmdb51-jtlat``, ``ucf101-pgd-at``; see
    ``hf_videomoe/recipes/``) or a JSON file mapping option names (``num_train_epochs``, ``layout``…) to values;
    keys starting with ``_`` are notes."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
        raise CLIError(f"--recipe {name_or_path}: no such file or shipped recipe (shipped: {', '.join(known)}).")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CLIError(f"--recipe {path} is not valid JSON ({err}).") from err
    if not isinstance(recipe, dict):
        raise CLIError(f"--recipe {path} must hold a JSON object of option names and values.")
    words = []
    for key, value in recipe.items():
        if key.startswith("_") or value is None:  # notes, and options left at their defaults
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            words += [flag, str(value).lower()]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        elif isinstance(value, dict):
            words += [flag, json.dumps(value)]
        else:
            words += [flag, str(value)]
    return words


def _expand_recipe(argv: list[str]) -> list[str]:
    argv = list(argv)
    if sum(word == "--recipe" or word.startswith("--recipe=") for word in argv) > 1:
        raise CLIError("--recipe is given more than once; pass one recipe and override its options with flags.")
    for index, word in enumerate(argv):
        if word == "--recipe" or word.startswith("--recipe="):
            if "=" in word:
                name, rest = word.split("=", 1)[1], argv[index + 1 :]
            elif index + 1 < len(argv):
                name, rest = argv[index + 1], argv[index + 2 :]
            else:
                raise CLIError("--recipe needs a recipe name or a JSON file.")
            return recipe_arguments(name) + argv[:index] + rest
    return argv


def parse_train_args(
    argv: list[str],
) -> tuple[DataArguments, ModelArguments, RunArguments, AdversarialTrainingArguments]:
    """Parse ``hf-videomoe train`` arguments into its four dataclasses (``--help`` prints the help and exits).
    ``--recipe NAME_OR_FILE`` first applies a recipe's options (see [`recipe_arguments`])."""
    parser = build_train_parser()
    namespace, remaining = parser.parse_known_args(_expand_recipe(argv))
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    _normalise(namespace, parser)
    outputs = []
    for dtype in parser.dataclass_types:
        keys = {item.name for item in dataclasses.fields(dtype) if item.init}
        try:
            outputs.append(dtype(**{key: value for key, value in vars(namespace).items() if key in keys}))
        except ValueError as err:  # e.g. --bf16 on a machine without bf16 support: one line, not a traceback
            parser.error(" ".join(str(err).split()))
    return tuple(outputs)


def build_model(model_args: ModelArguments, label_names: list[str], data: DataArguments, training_args, train_dataset):
    """The model ``hf-videomoe train`` trains: from scratch, or upcycled from ``--dense-checkpoint``."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    import hf_videomoe

    from ..data import stack_pixel_values
    from ..moe import cluster_routers

    seed = training_args.seed
    common = dict(
        image_size=data.image_size,
        num_frames=data.num_frames,
        patch_size=model_args.patch_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_layers,
        num_attention_heads=model_args.num_heads,
        intermediate_size=4 * model_args.hidden_size,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    moe = dict(
        num_experts=model_args.num_experts,
        num_experts_per_tok=model_args.top_k,
        router_granularity=model_args.granularity,
        router_gate=model_args.router_gate,
    )
    if model_args.dense_checkpoint:
        model_cls = (
            hf_videomoe.TimesformerMoeForVideoClassification
            if model_args.model_type == "timesformer_moe"
            else hf_videomoe.VideoMAEMoeForVideoClassification
        )
        labels = {key: common[key] for key in ("num_labels", "id2label", "label2id")}  # the dataset's classes
        model = model_cls.from_dense(
            model_args.dense_checkpoint,
            expert_init=model_args.expert_init,
            expert_init_ratio=model_args.expert_init_ratio,
            expert_init_seed=seed,
            **moe,
            **labels,
        )
        if model_args.cluster_router_clips:
            # A seeded random subset: video folders list their clips class by class.
            calibration = train_dataset.shuffle(seed=seed).select(
                range(min(model_args.cluster_router_clips, len(train_dataset)))
            )
            cluster_routers(model, stack_pixel_values(calibration), seed=seed)
        return model
    if model_args.cluster_router_clips:
        raise CLIError("--cluster-router-clips initialises the routers of a model upcycled with --dense-checkpoint.")
    if model_args.model_type == "videomae_moe":
        return hf_videomoe.VideoMAEMoeForVideoClassification(hf_videomoe.VideoMAEMoeConfig(**common, **moe))
    if model_args.model_type == "timesformer_moe":
        return hf_videomoe.TimesformerMoeForVideoClassification(hf_videomoe.TimesformerMoeConfig(**common, **moe))
    if training_args.adv_method in ("j-tlat", "advmoe"):
        raise CLIError(f"--adv-method {training_args.adv_method} needs an MoE model; use --model-type videomae_moe.")
    return VideoMAEForVideoClassification(VideoMAEConfig(**common))


def dense_checkpoint_geometry(dense_checkpoint: str | None, data: DataArguments) -> dict[str, Any] | None:
    """How videos are decoded when upcycling ``dense_checkpoint``: with its processor's resize (which `from_dense`
    keeps in the MoE's processors, so training, evaluation and the pipeline see the same pixels)."""
    from ..data import decode_settings
    from ..models.processing import load_local_image_processor

    if not dense_checkpoint or data.dataset == "moving-shapes" or not Path(dense_checkpoint).is_dir():
        return None
    try:
        settings = decode_settings(load_local_image_processor(dense_checkpoint))
    except ValueError:  # a resize the library does not implement: the processors written with the MoE replace it
        settings = {}
    return {"num_frames": data.num_frames, "image_size": data.image_size, **settings}


def run_train(argv: list[str]) -> dict[str, Any]:
    """Run ``hf-videomoe train`` with the arguments after ``train``; prints and returns the final metrics. The model,
    its processor and ``training_recipe.json`` (the recipe the model card shows) go to ``--output_dir``."""
    data, model_args, run, training_args = parse_train_args(argv)
    # May restart the process with the pinned environment; None follows HF_VIDEOMOE_REPRODUCIBLE.
    reproducibility = enable_reproducible_mode(True if run.reproducible else None)

    from ..data import VideoCollator
    from ..evaluation import compute_metrics
    from ..hub.checkpoint_files import write_training_record
    from ..training import AdversarialTrainer, JTLATTrainer

    data_seed = training_args.data_seed if training_args.data_seed is not None else 0
    geometry = dense_checkpoint_geometry(model_args.dense_checkpoint, data)
    with training_args.main_process_first(desc="loading (and caching) the videos"):  # one process builds a cache
        train_dataset = load_dataset(data, "train", data_seed, geometry=geometry)
        eval_dataset = load_dataset(data, "test", data_seed, geometry=geometry)
    label_names = train_dataset.features["labels"].names
    model = build_model(model_args, label_names, data, training_args, train_dataset)
    trainer_cls = JTLATTrainer if training_args.adv_method == "j-tlat" else AdversarialTrainer
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=VideoCollator(),
        compute_metrics=compute_metrics,
    )
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if str(resume).lower() == "true" else resume)
    trainer.save_model(training_args.output_dir)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        recipe = trainer.training_recipe()
        recipe.update(
            model_type=model_args.model_type,
            dataset=data.dataset,
            num_frames=data.num_frames,
            image_size=data.image_size,
        )
        write_training_record(
            Path(training_args.output_dir),
            recipe,
            base_model=model_args.dense_checkpoint,
            dataset_kwargs=data.moving_shapes_kwargs(data_seed),
            reproducibility=reproducibility,
            weights_sha256=weights_sha256(trainer.model),
        )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=2))
    return metrics
