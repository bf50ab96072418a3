"""Memory of the per-example gradient tables of SAG, SAGA and SAGA-LD, before allocating them.

The calculator applies the rule the tables themselves are laid out by
(:func:`backprobe.optim.storage.table_kind` and :func:`~backprobe.optim.storage.entry_numbers`),
so ``SAGA(..., storage=s).memory()["table"] == storage_bytes(model, N, s)`` after the first
step. A storage is a spec of :mod:`backprobe.optim.storage` or one of these strings:

======================  =====================  ================================================
spec                    string                 numbers per example (or per group)
======================  =====================  ================================================
``Dense()``             ``"naive"``            every trainable parameter's ``numel``
``Factored()``          ``"normal"``           each ``nn.Linear`` (weight and bias together):
                                               ``D_in + D_out``; every other parameter: numel
``LowRank(r)``          ``"rankR"``            ``nn.Linear`` as in ``Factored``; every other
                                               parameter with ``ndim >= 2`` viewed as an
                                               ``O x I`` matrix: ``r*(O+I)``, or ``O*I``
                                               (dense) when that is not smaller; 1-D: numel
``Partition(m)``        ``"partitionM"``       per group of ``m`` examples (``ceil(N/m)``
``Partition(m,``        ``"rankR+partitionM"`` groups), each as the inner spec, Linear layers
``LowRank(r))``                                included (a group's gradient is not rank one)
======================  =====================  ================================================

The Linear rule assumes 2-D inputs (one position per example, what ``BatchGradFactors``
factors); a Linear layer applied to sequences ``[N, T, D]`` is recorded dense, and the
calculator would under-count it. Bytes are numbers times the element size of ``dtype``.

The comparison with El Hanchi's table ("Time and Memory Efficient Variance Reduced
Optimization and Sampling for Deep Learning") is ``backprobe memory --vr`` (the app) and
``benchmarks/bench_vr_memory.py`` (which of the paper's figures reproduce, and why not).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> storage_numbers(model, "normal")
    {'0.weight': 7, '0.bias': 0, '2.weight': 5, '2.bias': 0}
    >>> storage_bytes(model, 10, "naive")  # 23 numbers * 10 examples * 4 bytes
    920
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from backprobe.optim._base import check
from backprobe.optim.storage import (
    Dense,
    Factored,
    LowRank,
    Partition,
    Storage,
    entry_numbers,
    slot_count,
    table_kind,
)

__all__ = ["parse_storage", "storage_bytes", "storage_name", "storage_numbers", "storage_units"]

_GRAMMAR = ("naive | dense | normal | factored | rankR | partitionM | rankR+partitionM "
            "(R, M positive integers)")


def _parse_string(text: str) -> Storage:
    key = text.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    inner: Storage | None = None
    size: int | None = None
    for part in key.split("+"):
        m_rank = re.fullmatch(r"rank(\d+)", part)
        m_size = re.fullmatch(r"partition(\d+)", part)
        if m_size and size is None:
            size = int(m_size.group(1))
        elif m_rank and inner is None:
            inner = LowRank(int(m_rank.group(1)))
        elif part in ("naive", "dense") and inner is None:
            inner = Dense()
        elif part in ("normal", "factored") and inner is None:
            inner = Factored()
        else:
            raise ValueError(f"unknown storage spec {text!r}; expected {_GRAMMAR}")
    inner = Dense() if inner is None else inner
    return inner if size is None else Partition(size, inner)


def parse_storage(storage: Storage | str) -> Storage:
    """Normalise a storage spec to a :mod:`backprobe.optim.storage` spec object.

    Args:
        storage: a spec object (returned as is) or a string: ``"naive"``/``"dense"``,
            ``"normal"``/``"factored"``, ``"rankR"``, ``"partitionM"``, ``"rankR+partitionM"``
            (case, dashes and underscores ignored).

    Returns:
        The spec, e.g. ``Partition(128, LowRank(1))`` for ``"rank1+partition128"``.

    Raises:
        ValueError: unknown string, a non-positive rank or size, ``Partition(m, Factored())``.
        TypeError: neither a spec nor a string.

    Example:
        >>> parse_storage("rank1+partition128")
        Partition(size=128, inner=LowRank(rank=1, oversample=8, power_iters=2))
    """
    if isinstance(storage, Storage):
        return storage
    if isinstance(storage, str):
        return _parse_string(storage)
    raise TypeError(f"storage must be a string ({_GRAMMAR}) or a backprobe.optim storage spec "
                    f"(Dense, Factored, LowRank, Partition), got {type(storage).__name__}")


def storage_name(storage: Storage | str) -> str:
    """The string of a spec (``"naive"``, ``"normal"``, ``"rankR"``, ``"rankR+partitionM"``...).

    Args:
        storage: a spec accepted by :func:`parse_storage`.

    Returns:
        The name :func:`parse_storage` reads back to the same spec (defaults of ``LowRank``'s
        randomized SVD aside).
    """
    spec = parse_storage(storage)
    inner = spec.inner if isinstance(spec, Partition) else spec
    name = {Dense: "naive", Factored: "normal"}.get(type(inner), "")
    if isinstance(inner, LowRank):
        name = f"rank{inner.rank}"
    if not isinstance(spec, Partition):
        return name
    return f"partition{spec.size}" if isinstance(inner, Dense) else f"{name}+partition{spec.size}"


def storage_numbers(model: nn.Module, storage: Storage | str) -> dict[str, int]:
    """Numbers one stored gradient (one slot) costs, by parameter name.

    Only trainable parameters count, shared ones once. A factored ``nn.Linear`` puts its whole
    ``D_in + D_out`` on the weight; its bias gets 0 (the table keeps it with the weight).

    Args:
        model: the network (may live on the meta device).
        storage: a spec accepted by :func:`parse_storage`.

    Returns:
        ``{parameter name: numbers}`` in ``model.named_parameters()`` order.

    Raises:
        ValueError: bad spec (see :func:`parse_storage`).
        TypeError: ``model`` is not an ``nn.Module``, or a bad spec type.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    spec = parse_storage(storage)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    folded = {id(m.bias) for m in model.modules() if isinstance(m, nn.Linear)
              and m.bias is not None
              and table_kind(spec, m.weight.shape, factored=True) == "factored"}
    return {
        name: 0 if id(p) in folded else
        entry_numbers(spec, p.shape, factored=id(p) in linear_weights)
        for name, p in model.named_parameters() if p.requires_grad
    }


def storage_units(num_examples: int, storage: Storage | str) -> int:
    """How many gradients are stored: ``N``, or ``ceil(N / size)`` groups for a partition.

    Args:
        num_examples: training-set size ``N >= 1``.
        storage: a spec accepted by :func:`parse_storage`.

    Returns:
        The number of slots.

    Raises:
        ValueError: ``num_examples < 1`` or a bad spec.
        TypeError: ``num_examples`` is not an int.
    """
    check("num_examples", num_examples, "count")
    return slot_count(parse_storage(storage), num_examples)


def storage_bytes(model: nn.Module, num_examples: int, storage: Storage | str,
                  dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the whole table: ``units * sum(storage_numbers) * element size``.

    Args:
        model: the network (may live on the meta device).
        num_examples: training-set size ``N >= 1``.
        storage: a spec accepted by :func:`parse_storage`.
        dtype: element type of the stored numbers.

    Returns:
        Bytes.

    Raises:
        ValueError: ``num_examples < 1`` or a bad spec.
        TypeError: bad argument types.

    Example:
        >>> from torch import nn
        >>> storage_bytes(nn.Linear(100, 10), 1000, "normal")  # 110 * 1000 * 4
        440000
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    units = storage_units(num_examples, storage)
    return units * sum(storage_numbers(model, storage).values()) * dtype.itemsize


def _storage_spec(kind: str, rank: int | None = None, partition: int | None = None) -> Storage:
    """The spec the removed ``StorageSpec(kind, rank, partition)`` described."""
    kinds: dict[str, Any] = {"dense": Dense, "factored": Factored}
    if kind not in (*kinds, "lowrank"):
        raise ValueError(f"storage kind must be dense, factored or lowrank, got {kind!r}")
    inner: Storage = LowRank(rank) if kind == "lowrank" else kinds[kind]()  # type: ignore[arg-type]
    return inner if partition is None else Partition(partition, inner)


def __getattr__(name: str) -> Any:
    if name == "StorageSpec":
        warnings.warn("vr_memory.StorageSpec is deprecated: use the specs of "
                      "backprobe.optim.storage (Dense, Factored, LowRank, Partition)",
                      DeprecationWarning, stacklevel=2)
        return _storage_spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
