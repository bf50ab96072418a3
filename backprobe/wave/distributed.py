"""Shots sharded across processes: the plumbing of distributed FWI.

Each process models a contiguous share of the shots; the misfit and its gradient are sums
over shots, so one all-reduce (sum) of each gives every process the global values, and
every process then takes the same optimiser step. Launch with ``torchrun``::

    torchrun --nproc_per_node 4 -m backprobe fwi --model layered --shots 32 ...

The same code runs on one process (no process group: the collectives are no-ops) and on a
cluster (``torchrun --nnodes ...``; gloo on CPUs, NCCL where the tensors live on GPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "init_from_env", "rank_and_world", "shard"]


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPU).

    Returns:
        Whether a process group is active afterwards (``False`` for a plain single process:
        no ``WORLD_SIZE`` in the environment).
    """
    if dist.is_available() and not dist.is_initialized() and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=backend)
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous share of ``range(n)`` that process ``rank`` of ``world`` handles.

    Shares differ in size by at most one, the first ``n % world`` being larger; a process
    can get an empty share when ``n < world``.

    Args:
        n: number of items (shots), >= 0.
        rank: this process, ``0 <= rank < world``.
        world: number of processes, >= 1.

    Returns:
        The indices of this share.

    Raises:
        ValueError: for a negative ``n``, ``world < 1`` or a rank outside ``[0, world)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_reduce_sum(tensor: torch.Tensor,
                   group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``tensor`` over the processes of ``group``, in place (no-op on one process).

    Args:
        tensor: the local contribution; overwritten with the global sum.
        group: the process group (default: the world).

    Returns:
        ``tensor``.
    """
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor
