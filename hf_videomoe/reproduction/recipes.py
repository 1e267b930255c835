"""What the small-scale reproduction of the paper's tables runs: attacks, defenses, ablations, sizes
([`Settings`]), and the data / model / training-argument helpers every run shares."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..demo_settings import DemoSettings
from ..evaluation import ATTACK_PRESETS
from ..training_recipes import REPRODUCTION_WARMUP_STEPS, recipe_training_arguments

#: Table (a): the paper's attacks, in the paper's order, then AutoAttack's standard ensemble (APGD-CE, APGD-T, Square;
#: its FAB-T is not implemented, see `hf_videomoe.evaluation.ATTACK_PRESETS`), whose settings `Settings` fixes.
PAPER_ATTACKS = ("pgd-r", "tla-r", "tlga-r", "pgd", "tla-m", "j-tla", "j-tlga")
EXTRA_ATTACKS = tuple(ATTACK_PRESETS["autoattack"])
ATTACK_TABLE_ATTACKS = PAPER_ATTACKS + EXTRA_ATTACKS
ATTACK_LABELS = {
    "pgd-r": "PGD-R",
    "tla-r": "TLA-R",
    "tlga-r": "TLGA-R",
    "pgd": "PGD",
    "tla-m": "TLA-M",
    "j-tla": "J-TLA",
    "j-tlga": "J-TLGA",
    "apgd-ce": "APGD-CE",
    "apgd-t": "APGD-T",
    "square": "Square",
}
#: Table (b) and the ablations: attacks of every row. The worst case of a row is the per-sample AND over these (MoE-only
#: attacks are skipped for the dense model, which has no router to attack).
DEFENSE_ATTACKS = ("pgd", "tla-m", "j-tlga", "apgd-ce", "apgd-t", "square")

#: Table (b): label, trainer, adv_method, starting checkpoint.
DEFENSES = {
    "dense-at": ("Dense AT (PGD-AT)", "pgd-at", "dense"),
    "moe-at": ("MoE AT (PGD-AT)", "pgd-at", "moe"),
    "advmoe": ("AdvMoE-style", "advmoe", "moe"),
    "tlat": ("TLAT", "tlat", "moe"),
    "j-tlat": ("J-TLAT", "j-tlat", "moe"),
    # PGD-AT given J-TLAT's wall-clock time of the same seed (more epochs): is J-TLAT better than more PGD-AT?
    "moe-at-matched": ("MoE AT, compute-matched to J-TLAT", "pgd-at", "moe"),
}

#: Ablations: J-TLAT with one change each (the full J-TLAT row of table (b) is the reference).
ABLATIONS = {
    "temporal-uniform": ("temporal step: uniform", {"temporal_step": "uniform"}, {}),
    "temporal-published": ("temporal step: as published (not normalised)", {"temporal_step": "published"}, {}),
    "temporal-inverse": ("temporal step: inverse", {"temporal_step": "inverse"}, {}),
    "no-lipschitz": (
        "no Lipschitz terms (λ_F = λ_E = λ_R = 0)",
        {"lipschitz_weight": 0.0, "expert_lipschitz_weight": 0.0, "router_lipschitz_weight": 0.0},
        {},
    ),
    "no-aux": (
        "no load-balancing loss (aux coef 0, step-1 balance 0)",
        {"jtlat_router_balance_weight": 0.0},
        {"router_aux_loss_coef": 0.0},
    ),
    "router-soft": ("router target: clean probabilities (soft)", {"jtlat_router_target": "soft"}, {}),
    "balance-switch": ("step-1 balance: Switch loss instead of the sharp one", {"jtlat_router_balance": "switch"}, {}),
    "no-guidance": ("no guidance (γ1 = 0)", {"guidance_weight": 0.0}, {}),
    "one-lambda": (
        "one λ for model, expert and router (the paper's)",
        {"expert_lipschitz_weight": 1.7e-5, "router_lipschitz_weight": 1.7e-5},
        {},
    ),
    "expert-tla-e": ("step 2 on TLA-E examples", {"jtlat_expert_attack": "tla-e"}, {}),
    "no-router-step": ("without step 1 (router)", {"jtlat_steps": ["expert", "model"]}, {}),
    "no-expert-step": ("without step 2 (experts)", {"jtlat_steps": ["router", "model"]}, {}),
    "no-model-step": ("without step 3 (model)", {"jtlat_steps": ["router", "expert"]}, {}),
    "sequential-update": ("the paper's three sequential updates per batch", {"jtlat_update": "sequential"}, {}),
    # Is step 3's training attack (J-TLGA, weaker than PGD on these models) why J-TLAT trails PGD-AT? (docs/PROTOCOL.md)
    "model-attack-pgd": ("step 3 on PGD examples", {"jtlat_model_attack": "pgd"}, {}),
    "model-attack-tla-m": ("step 3 on TLA-M examples", {"jtlat_model_attack": "tla-m"}, {}),
}
#: The ablations whose step 3 trains on a strong attack's examples, with that attack's label: a registered family of
#: claims of their own (docs/PROTOCOL.md, "Registration of 2026-12-07"), read and plotted apart from the others.
MODEL_STEP_ABLATIONS = {"model-attack-pgd": "PGD", "model-attack-tla-m": "TLA-M"}


#: Written into every output folder: what of the cache goes under version control (results/reproduction2 is tracked).
CACHE_GITIGNORE = """\
# The reproduction's cache under version control (python scripts/reproduce_paper.py resumes from it on a fresh clone):
# every JSON result, each evaluation's per-clip report compressed (report-*.json.gz, attacks-*.json.gz) and the
# per-batch state of an evaluation still running. No weights: a rerun re-creates the checkpoints it needs bit for bit
# in reproducible mode (the default, hf_videomoe.reproducibility) and checks them against the fingerprint train.json
# records; docs/PROTOCOL.md names the commit that last held the older runs' weights.
# Written by the reproduction's runner: edit CACHE_GITIGNORE in hf_videomoe/reproduction/recipes.py.
*
!*/
!.gitignore
!settings.json
!train.json
!result.json
!attack-table-*.json
!attacks-*.seconds.json
!attacks-*.json.gz
!report-*.json.gz
!batch_*.json
trainer/
"""


@dataclass
class Settings:
    """Every size and hyper-parameter of the run. Defaults: the protocol of docs/PROTOCOL.md, sized for a GPU: on one
    CPU thread each evaluated row takes 30-50 minutes (600 clips, AutoAttack's budgets), so five seeds with their
    ablations are days of CPU (PROTOCOL.md, "Status"). Processes with disjoint ``--seeds`` / ``--ablation-seeds`` can
    share one ``--output-dir`` to use several cores; a last run with all seeds then only collects the cached results."""

    model_type: str = "videomae"
    # data
    num_videos: int = 2400
    num_frames: int = 8
    image_size: int = 32
    patch_size: int = 8
    difficulty: str = "easy"  # medium / hard are not learnable by this model in the budget (docs/RESULTS.md §1)
    data_seed: int = 0
    # model (dense baseline; the MoE is upcycled from it): the demo's sizes
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    num_experts: int = 4
    experts_per_token: int = 1
    # training
    batch_size: int = 32
    # The dense phase and the mixture phase are the demo's (docs/PROTOCOL.md), read from `DemoSettings`, whose
    # comments say why each value: model-level routing (one decision per clip, whole expert paths), routers started
    # from k-means clusters, Drop-Upcycling, a Switch balance weight of 0.005, trained without attacks.
    dense_epochs: float = float(DemoSettings.dense_epochs)
    dense_lr: float = DemoSettings.dense_learning_rate
    router_granularity: str = DemoSettings.router_granularity
    cluster_router_clips: int = DemoSettings.cluster_router_clips
    expert_init: str = DemoSettings.expert_init
    expert_init_ratio: float = DemoSettings.expert_init_ratio
    router_aux_loss_coef: float = DemoSettings.router_aux_loss_coef
    moe_epochs: float = float(DemoSettings.moe_epochs)
    moe_lr: float = DemoSettings.moe_learning_rate
    adv_epochs: float = 5.0
    adv_lr: float = 5e-4
    adv_steps: int = 2
    train_eps: float = 4 / 255
    # evaluation (fixed for every row before the runs; docs/PROTOCOL.md): all 600 test clips, the paper's attacks with
    # `eval_steps`, AutoAttack's standard ensemble with its own budgets
    eval_samples: int = 600
    eval_steps: int = 10
    eval_seed: int = 0
    eval_batch_size: int = 32
    autoattack_steps: int = 100
    square_queries: int = 5000
    #: ε of table (a); the first must be ``train_eps`` (table (b) and the ablations are evaluated at ``train_eps``).
    eps_values: list = field(default_factory=lambda: [4 / 255, 8 / 255, 14 / 255])
    #: "test": train on the train split, evaluate on the test clips (the protocol). "validation": train on the first
    #: 80 % of the train split and evaluate on its last 20 % (`hf_videomoe.data.hold_out_validation`), to choose
    #: hyperparameters without touching the test clips (``scripts/reproduce_paper.py --validation``).
    eval_split: str = "test"

    #: Fields added after caches were written: a ``settings.json`` without one was written with its default.
    ADDED_FIELDS = {"eval_split": "test"}

    def __post_init__(self):
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"eval_split must be 'test' or 'validation', got {self.eval_split!r}.")

    @classmethod
    def quick(cls, **overrides) -> "Settings":
        values = dict(
            num_videos=96,
            num_frames=4,
            image_size=16,
            patch_size=8,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            batch_size=16,
            dense_epochs=2.0,
            moe_epochs=1.0,
            cluster_router_clips=32,
            adv_epochs=1.0,
            adv_steps=1,
            eval_samples=16,
            eval_steps=2,
            eval_batch_size=16,
            autoattack_steps=2,
            square_queries=5,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        # Caches written before a field existed keep their settings.json byte for byte while it has its default.
        return {k: v for k, v in values.items() if not (k in self.ADDED_FIELDS and v == self.ADDED_FIELDS[k])}


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    tqdm.write(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    tmp.replace(path)


def read_json(path: Path):
    """A JSON file, plain or gzip-compressed (``*.json.gz``, the cache's compact per-clip reports)."""
    path = Path(path)
    if path.suffix == ".gz":
        return json.loads(gzip.decompress(path.read_bytes()))
    return json.loads(path.read_text())


def compact_path(path: Path) -> Path:
    """Where the cache keeps the report ``path`` (``report-eps4.json``): compressed, ``report-eps4.json.gz``."""
    path = Path(path)
    return path if path.suffix == ".gz" else path.with_name(path.name + ".gz")


def cached_report(path: Path) -> Path | None:
    """The report ``path`` as the cache holds it (compressed, or plain as older caches wrote it), or ``None``."""
    for candidate in (compact_path(path), Path(path)):
        if candidate.exists():
            return candidate
    return None


def compress_file(path: Path) -> Path:
    """Replace ``path`` by its gzip-compressed copy (no timestamp in the header: same bytes in, same bytes out)."""
    path = Path(path)
    target = compact_path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    tmp.replace(target)
    path.unlink()
    return target


def eps_name(eps: float) -> str:
    return f"{round(eps * 255)}/255"


def eps_slug(eps: float) -> str:
    return f"eps{round(eps * 255)}"


def show_inner_progress() -> bool:
    return sys.stderr.isatty()


class TensorVideoDataset(torch.utils.data.Dataset):
    """A split of MovingShapes held as two tensors (indexing an Arrow-backed `datasets.Dataset` and validating every
    clip in the collator costs more than the tiny model's forward / backward pass at this scale)."""

    column_names = ["pixel_values", "labels"]

    def __init__(self, dataset):
        columns = dataset[:]
        self.pixel_values = torch.as_tensor(columns["pixel_values"]).float().contiguous()
        self.labels = torch.as_tensor(columns["labels"]).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}

    def select(self, indices):
        out = copy.copy(self)
        indices = torch.as_tensor(list(indices), dtype=torch.long)
        out.pixel_values, out.labels = self.pixel_values[indices], self.labels[indices]
        return out


def stack_collate(features):
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def model_classes(model_type: str):
    if model_type == "videomae":
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        from hf_videomoe import VideoMAEMoeForVideoClassification

        return VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEMoeForVideoClassification
    if model_type == "timesformer":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        from hf_videomoe import TimesformerMoeForVideoClassification

        return TimesformerConfig, TimesformerForVideoClassification, TimesformerMoeForVideoClassification
    raise ValueError(f"--model-type must be 'videomae' or 'timesformer', got {model_type!r}.")


def build_dense(settings: Settings, label_names: list[str]):
    config_cls, dense_cls, _ = model_classes(settings.model_type)
    common = dict(
        image_size=settings.image_size,
        patch_size=settings.patch_size,
        num_frames=settings.num_frames,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    if settings.model_type == "videomae":
        common["tubelet_size"] = 2
    # The dense model sees raw [0, 1] pixels (it does not normalise); the MoE is upcycled with mean 0 / std 1, so both
    # models see the same input and ε means the same thing for both.
    dense = dense_cls(config_cls(**common))
    if settings.model_type == "timesformer":
        # transformers leaves TimeSformer's time embeddings at zero, so the model would start blind to frame order;
        # initialised as TimesformerMoePreTrainedModel._init_weights does (see there why).
        embeddings = dense.timesformer.embeddings
        torch.nn.init.trunc_normal_(embeddings.time_embeddings, std=dense.config.initializer_range)
    return dense


def upcycle(dense, settings: Settings):
    _, _, moe_cls = model_classes(settings.model_type)
    return moe_cls.from_dense(
        dense,
        num_experts=settings.num_experts,
        num_experts_per_tok=settings.experts_per_token,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        router_granularity=settings.router_granularity,
        expert_init=settings.expert_init,
        expert_init_ratio=settings.expert_init_ratio,
        router_aux_loss_coef=settings.router_aux_loss_coef,
    )


#: Statistics of the input normalisation used for the clean training of the dense baseline. A VideoMAE fed raw [0, 1]
#: pixels does not learn MovingShapes at all at this scale (it stays at chance, even on "easy"), so the clean
#: "pretraining" sees (x - 0.5) / 0.25; afterwards the normalisation is folded into the patch-embedding convolution
#: (exact: stride = kernel, no padding), which gives a plain transformers checkpoint that takes [0, 1] pixels.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


class NormalizingCollator:
    """The collator followed by ``(x - PIXEL_MEAN) / PIXEL_STD`` (clean training of the dense baseline only)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch["pixel_values"] = (batch["pixel_values"] - PIXEL_MEAN) / PIXEL_STD
        return batch


def fold_input_normalization(model, mean: float = PIXEL_MEAN, std: float = PIXEL_STD) -> None:
    """Make ``model(x)`` equal the old ``model((x - mean) / std)`` by rewriting the patch-embedding convolution."""
    conv = model.base_model.embeddings.patch_embeddings.projection
    with torch.no_grad():
        weight = conv.weight
        dims = tuple(range(1, weight.dim()))
        conv.bias.sub_((weight * (mean / std)).sum(dim=dims))
        weight.div_(std)


def training_arguments(output_dir: Path, settings: Settings, *, epochs: float, lr: float, seed: int, **kwargs):
    """The reproduction's `AdversarialTrainingArguments` for one phase: the project's recipe
    (`hf_videomoe.training_recipes`) with the reproduction's warm-up (``kwargs``: the adversarial settings)."""
    return recipe_training_arguments(
        output_dir,
        epochs=epochs,
        learning_rate=lr,
        batch_size=settings.batch_size,
        seed=seed,
        warmup_steps=REPRODUCTION_WARMUP_STEPS,  # not the demo's: see `REPRODUCTION_WARMUP_STEPS` for why
        # Unlike the demo, which leaves these three at their defaults: the data order is seeded explicitly, the inner
        # progress bars go to a terminal only (the runs last days and are followed in log files), and a machine
        # without CUDA trains on the CPU, never on Apple's MPS, as the recorded checkpoints were.
        data_seed=seed,
        show_progress=show_inner_progress(),
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------
