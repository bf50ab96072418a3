"""Compact tables of per-example gradients for SAG, SAGA and SAGA-LD (El Hanchi).

Variance-reduced methods keep the last gradient ``T_i`` of every training example ``i``: a
naive table holds ``N * d`` numbers. El Hanchi ("Time and Memory Efficient Variance Reduced
Optimization and Sampling for Deep Learning") stores them compactly. A *storage* is a spec
the optimizer turns into one table per parameter (or per Linear layer):

==============================  ======================================================
storage                         numbers held per example (``N`` slots)
==============================  ======================================================
``Dense()``                     ``numel`` of every parameter (the paper's "Naive")
``Factored()`` (default)        Linear layers: ``D_in + D_out`` for weight *and* bias
                                (``T_i = delta_i a_i^T``, bias ``delta_i``); every other
                                parameter dense
``LowRank(r)``                  as ``Factored``, and every other matrix parameter
                                (``O x I``, conv weights as ``[C_out, C_in*k*k]``) as a
                                rank-``r`` SVD sketch: ``r * (O + I)``; dense where that is
                                not smaller; vectors dense
``Partition(M, inner)``         ``ceil(N / M)`` slots, one per fixed group of ``M``
                                consecutive indices, each as ``inner`` (``Dense`` or
                                ``LowRank``) without Linear factors (a group's gradient is
                                not rank one)
==============================  ======================================================

A Linear layer is factored when the recording gave its weight ``p.grad_batch_factors``
(:class:`~backprobe.quantities.BatchGradFactors`: a Linear layer applied once to ``[N, D]``
inputs); ``Factored()`` and ``LowRank`` keep other layers dense or low-rank, so the same
spec works on any model ``record`` supports. ``Factored()`` stores exactly; ``LowRank`` is a
lossy compression, computed batched by a randomized SVD (Halko, Martinsson & Tropp 2011,
Alg. 4.4: ``oversample`` extra columns, ``power_iters`` subspace iterations). SAGA stays
unbiased with any table content, since it corrects with the table's own exact average.

With ``Partition``, slot ``k`` holds the mean of the newest gradients of the batch's members
in group ``k = i // M``: *partition sampling* draws whole groups as batches
(:func:`partition_batches`), and then the slot is the group's gradient, read from ``p.grad``
when no per-example gradient was recorded (no per-example work at all).

Memory is accounted exactly: ``Table.nbytes`` (:mod:`backprobe.optim.tables`) is the bytes
of the tensors a table holds; tables are laid out by :func:`table_kind` and
:func:`backprobe.optim.vr_memory.storage_bytes` counts with the same rule
(:func:`entry_numbers`), so it predicts those bytes from the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


class Storage:
    """Base class of the storage specs (what an optimizer keeps per example)."""


@dataclass(frozen=True)
class Dense(Storage):
    """Every per-example gradient as it is: ``numel`` numbers per example and parameter."""


@dataclass(frozen=True)
class Factored(Storage):
    """Linear layers as factor pairs ``(delta_i, a_i)`` (exact); everything else dense."""


@dataclass(frozen=True)
class LowRank(Storage):
    """Matrix parameters as rank-``rank`` sketches, Linear layers as exact factors.

    Args:
        rank: kept singular triplets per example.
        oversample: extra random columns of the randomized SVD.
        power_iters: subspace (power) iterations of the randomized SVD.
    """

    rank: int
    oversample: int = 8
    power_iters: int = 2

    def __post_init__(self) -> None:
        for name in ("rank", "oversample", "power_iters"):
            v, low = getattr(self, name), 1 if name == "rank" else 0
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"LowRank: {name} must be an int, got {v!r}")
            if v < low:
                raise ValueError(f"LowRank: {name} must be >= {low}, got {v!r}")


@dataclass(frozen=True)
class Partition(Storage):
    """One slot per fixed group of ``size`` consecutive example indices, each as ``inner``.

    Args:
        size: examples per group (the last group may be smaller).
        inner: ``Dense()`` (default) or ``LowRank(r)``.
    """

    size: int
    inner: Storage = field(default_factory=Dense)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"Partition: size must be a positive int, got {self.size!r}")
        if isinstance(self.inner, Partition):
            raise ValueError(f"Partition cannot nest another Partition, got inner={self.inner!r}")
        if not isinstance(self.inner, (Dense, LowRank)):
            raise ValueError(
                f"Partition: inner must be Dense() or LowRank(r), got {self.inner!r}; a group's "
                "gradient is a sum of per-example ones, so Linear layers cannot stay factored"
            )


def partition_batches(
    num_examples: int, size: int, generator: torch.Generator | None = None
) -> Iterator[Tensor]:
    """One epoch of partition sampling: the groups ``[k*size, (k+1)*size)`` in random order.

    Example:
        >>> [b.tolist() for b in partition_batches(5, 2, torch.Generator().manual_seed(0))]
        [[4], [0, 1], [2, 3]]
    """
    groups = math.ceil(num_examples / size)
    for k in torch.randperm(groups, generator=generator).tolist():
        yield torch.arange(k * size, min((k + 1) * size, num_examples))



def table_kind(spec: Storage, shape: Sequence[int], *, factored: bool = False) -> str:
    """How one slot of a ``spec`` table keeps a parameter of ``shape``: the counting rule.

    ``"factored"``: a Linear weight whose per-example factors were recorded (``factored``),
    kept as ``delta [O]`` and ``a [I]`` (its bias shares ``delta``), only for ``Factored`` and
    ``LowRank`` (a partition group's gradient is not rank one). ``"lowrank"``: a parameter of
    ``ndim >= 2`` under ``LowRank(r)`` (also inside a partition), viewed as ``O x I`` with
    ``O = shape[0]``, kept as rank-``r`` factors when ``r (O + I) < O I``. ``"dense"``: the rest.

    Args:
        spec: the storage spec.
        shape: the parameter's shape.
        factored: whether the parameter is a Linear weight recorded as factors.

    Returns:
        ``"factored"``, ``"lowrank"`` or ``"dense"``.
    """
    if factored and isinstance(spec, (Factored, LowRank)):
        return "factored"
    inner = spec.inner if isinstance(spec, Partition) else spec
    if isinstance(inner, LowRank) and len(shape) >= 2:
        o, i = shape[0], math.prod(shape[1:])
        if inner.rank * (o + i) < o * i:
            return "lowrank"
    return "dense"


def entry_numbers(spec: Storage, shape: Sequence[int], *, factored: bool = False) -> int:
    """Numbers one slot of a ``spec`` table holds for a parameter of ``shape``.

    ``O + I`` for a factored Linear weight ``[O, I]`` (bias included: it shares ``delta``),
    ``r (O + I)`` for a low-rank sketch, ``numel`` for a dense entry (see :func:`table_kind`).

    Args:
        spec: the storage spec.
        shape: the parameter's shape.
        factored: whether the parameter is a Linear weight recorded as factors.

    Returns:
        The count; the bytes of a table are ``slot_count * sum(entry_numbers) * itemsize``.
    """
    kind = table_kind(spec, shape, factored=factored)
    if kind == "factored":
        return int(shape[0]) + int(shape[1])
    if kind == "lowrank":
        inner = spec.inner if isinstance(spec, Partition) else spec
        assert isinstance(inner, LowRank)
        return inner.rank * (int(shape[0]) + math.prod(shape[1:]))
    return math.prod(shape)


def slot_count(spec: Storage, num_examples: int) -> int:
    """Slots a table of ``spec`` has for ``num_examples`` examples."""
    if isinstance(spec, Partition):
        return math.ceil(num_examples / spec.size)
    return num_examples


def group_sizes(spec: Storage, num_examples: int, slots: Tensor) -> Tensor:
    """Examples represented by each of ``slots`` (``1`` without partitions)."""
    if not isinstance(spec, Partition):
        return torch.ones(slots.shape, dtype=torch.float64)
    start = slots * spec.size
    end = torch.clamp(start + spec.size, max=num_examples)
    return (end - start).to(torch.float64)
