"""The demo's sizes and training recipe ([`DemoSettings`]), apart from its pipeline (`hf_videomoe.demo`): the
reproduction trains its dense and mixture phases with these values, and scripts re-run single phases with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .training_recipes import DEMO_WARMUP_STEPS, recipe_training_arguments


@dataclass
class DemoSettings:
    """Sizes of the demo. The defaults finish within 15 minutes on 2 CPU cores; ``quick`` in about a minute.

    The dense recipe is the one `scripts/check_benchmark.py` shows learns MovingShapes (docs/RESULTS.md).
    """

    num_videos: int = 2400
    num_frames: int = 8
    image_size: int = 32
    difficulty: str = "easy"
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    # A dense phase of 20 epochs, not 30: upcycled from a dense model that already solves the task, the mixture has
    # nothing left to specialise on and random routing costs 1-3 points; from 20 epochs the mixture learns the rest
    # itself and its routing matters (docs/routing_relevance.md, docs/history.md).
    dense_epochs: float = 20
    dense_learning_rate: float = 2e-3
    # The mixture phase: without it the upcycled experts stay near-identical and routing does not matter. 30 epochs,
    # not 20: on the validation split both defenses then keep more clean accuracy (74-76 % vs 70-72 %) and learned
    # routing still beats random routing by 7-8 points after them (docs/routing_relevance.md, docs/history.md).
    moe_epochs: float = 30
    moe_learning_rate: float = 1e-3
    expert_init: str = "drop_upcycling"
    expert_init_ratio: float = 0.5
    # The paper's mixture: one decision per clip from the first MoE layer's router, followed by every MoE layer, so
    # expert i is a whole path; routers start from k-means clusters of their inputs on this many training clips.
    router_granularity: str = "model"
    cluster_router_clips: int = 512
    # Switch load-balancing weight, half the config default: at 0.01 the clustered paths end as equally good
    # specialists (forced paths 4.9-6.9 points apart on two of three validation seeds); at 0.005 they differ by 11-23
    # points with learned routing still 15.6-20.7 points above random and every path serving >= 11.6 % of the clips;
    # lower weights let a path die (docs/METHOD.md §1, docs/history.md).
    router_aux_loss_coef: float = 0.005
    adv_epochs: float = 5
    adv_learning_rate: float = 5e-4
    adv_steps: int = 2
    eval_samples: int = 256
    eval_steps: int = 10
    batch_size: int = 32
    # 4/255, not 8/255: at 8/255 both defenses lost half their clean accuracy and sat at the robustness floor
    # (docs/RESULTS.md §2, run of 2026-12-01), where no defense can be told from another.
    eps: float = 4 / 255

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(
            num_videos=96,
            num_frames=4,
            image_size=16,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            dense_epochs=1,
            moe_epochs=1,
            adv_epochs=1,
            adv_steps=1,
            eval_samples=16,
            eval_steps=2,
            batch_size=16,
        )

    def training_arguments(self, output_dir: str | Path, epochs: float, learning_rate: float, seed: int, **kwargs):
        """The demo's `AdversarialTrainingArguments` for one phase (``kwargs``: the adversarial settings)."""
        return recipe_training_arguments(
            output_dir,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=self.batch_size,
            seed=seed,
            warmup_steps=DEMO_WARMUP_STEPS,  # not the reproduction's: see `DEMO_WARMUP_STEPS` for why
            **kwargs,
        )
