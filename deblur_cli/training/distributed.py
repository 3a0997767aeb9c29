"""The processes of a training run (torchrun) and the RNG streams each one owns, for exact resume.

Single-process runs never touch torch.distributed: every helper short-cuts on `world == 1`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def rng_state() -> dict[str, Any]:
    """Every global RNG stream the loop draws from, as tensors and primitives (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python_version": version,
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; join the group (NCCL on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(rank, world, local_rank)


def gather_rng(ddp: Dist) -> dict[str, Any] | list[dict[str, Any]]:
    """RNG states of every rank (each rank's dropout stream differs), gathered on rank 0."""
    state = rng_state()
    if ddp.world == 1:
        return state
    states: list[Any] = [None] * ddp.world
    dist.all_gather_object(states, state)
    return states


def broadcast(value: float | None) -> float | None:
    """Rank 0's value on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
