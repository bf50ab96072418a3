"""Data-parallel plumbing for :mod:`backprobe.app.training`: devices, process group, shards.

Every process walks the same global batches (one shared generator) and takes a contiguous
shard of each (:func:`shard`); :class:`Dist` sums per-process statistics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Dist", "global_batches", "init_distributed", "resolve_device", "shard"]


@dataclass(frozen=True)
class Dist:
    """This process's rank, the world size and its device (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        """Whether collectives are needed (more than one process, or a process group)."""
        return self.world > 1 or torch.distributed.is_initialized()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over processes (as float64; unchanged with one process)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.active:
            torch.distributed.all_reduce(t)
        return t.tolist()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this rank's GPU if there is one, else the CPU; ``"cuda"`` -> this rank's GPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        local_rank: the process's rank on its machine (picks the GPU).

    Returns:
        The device.
    """
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ...).

    Backend: nccl on CUDA, gloo on CPU. Reuses an existing process group.

    Args:
        device: as for :func:`resolve_device`.

    Returns:
        This process's :class:`Dist`.

    Raises:
        ValueError: if no process group exists and torchrun's variables are unset (a usage
            error: the command line prints it as one line).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError(
                "--ddp needs a process group: launch with `torchrun --nproc_per_node N -m "
                "backprobe train ... --ddp` (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT unset)"
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend=backend)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev)


def global_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index sets of the global mini-batches of one epoch (same on every process)."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def shard(indices: Tensor, rank: int, world: int) -> Tensor:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(indices, world)[rank]


