"""Sharding an evaluation over Accelerate processes: who evaluates which batch, and gathering the records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Distribution", "resolve_distributed"]


@dataclass
class Distribution:
    world: int = 1
    rank: int = 0
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, records: list) -> list:
        if self.world == 1:
            return records
        from accelerate.utils import gather_object

        return gather_object(records)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def resolve_distributed(accelerator: Any) -> Distribution:
    state = accelerator
    if state is None:
        try:
            from accelerate import PartialState
        except ImportError:  # pragma: no cover
            return Distribution()
        initialised = bool(getattr(PartialState, "_shared_state", {}))
        if not initialised and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Distribution()
        if initialised:
            state = PartialState()
        else:
            # PartialState only sets up multi-CPU (gloo) runs when told to; mirror AcceleratorState's
            # ACCELERATE_USE_CPU flag and fall back to CPU when there is no accelerator.
            from accelerate.utils import parse_flag_from_env

            cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
            state = PartialState(cpu=cpu)
    world = int(getattr(state, "num_processes", 1))
    rank = int(getattr(state, "process_index", 0))
    return Distribution(world=world, rank=rank, state=state)
