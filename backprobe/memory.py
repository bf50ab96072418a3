"""Measure what autograd keeps for backward, with ``saved_tensors_hooks``.

Bytes are counted per underlying storage (a tensor saved twice, or a view of a saved
tensor, counts once) and parameters/buffers are excluded: what is left is the activation
memory a training step holds between forward and backward. :func:`saved_activation_bytes`
also leaves out the input batch, which its owner holds through the step anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class SavedLog:
    """Storages saved for backward while the context was active, with their owners."""

    exclude: set[int] = field(default_factory=set)
    storages: dict[int, int] = field(default_factory=dict)
    owner: dict[int, str] = field(default_factory=dict)
    current: str = ""

    def add(self, t: Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse/nested: count elements
            self.storages[id(t)] = t.numel() * t.element_size()
            return
        ptr = storage.data_ptr()
        if ptr in self.exclude or ptr == 0:
            return
        if ptr not in self.storages:
            self.owner[ptr] = self.current
        self.storages[ptr] = max(self.storages.get(ptr, 0), storage.nbytes())

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def by_owner(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ptr, b in self.storages.items():
            name = self.owner.get(ptr, "")
            out[name] = out.get(name, 0) + b
        return out


def _storage_ptrs(tensors: Iterable[Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


@contextmanager
def saved_tensors(exclude: Iterable[Tensor] = ()) -> Iterator[SavedLog]:
    """Log every tensor autograd saves inside the block (except ``exclude``'s storages).

    Example:
        >>> with saved_tensors(model.parameters()) as log:
        ...     loss = model(x).sum()
        >>> log.bytes
    """
    log = SavedLog(exclude=_storage_ptrs(exclude))

    def pack(t: Tensor) -> Tensor:
        log.add(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield log


def saved_activation_bytes(
    model: nn.Module, x: Tensor, target: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, *, per_layer: bool = False,
) -> int | dict[str, int]:
    """Bytes of activations kept for backward by one forward (and loss) of ``model``.

    Parameters, buffers and the input batch ``x`` (and ``target``) are not counted: they
    exist before the step and after it whether autograd keeps them or not.

    Args:
        model: the network (parameters and buffers are not counted).
        x: input batch (not counted where saved).
        target: labels for ``loss_fn``; without both, only the forward is measured.
        loss_fn: e.g. ``nn.CrossEntropyLoss()``.
        per_layer: return ``{leaf module name: bytes}`` (loss and functional ops under ``""``).

    Returns:
        Total bytes, or the per-layer dict.
    """
    params = list(model.parameters()) + list(model.buffers()) + [x]
    if target is not None:
        params.append(target)
    handles = []
    with saved_tensors(params) as log:
        if per_layer:
            for name, m in model.named_modules():
                if next(m.children(), None) is None:
                    handles.append(m.register_forward_pre_hook(
                        lambda mod, inp, name=name: setattr(log, "current", name)))
                    handles.append(m.register_forward_hook(
                        lambda mod, inp, out: setattr(log, "current", "")))
        try:
            with torch.enable_grad():
                out = model(x)
                if loss_fn is not None and target is not None:
                    loss_fn(out, target)
        finally:
            for h in handles:
                h.remove()
    return log.by_owner() if per_layer else log.bytes
