"""The tables behind :mod:`backprobe.optim.storage`'s specs, and one step's recorded gradients.

A :class:`Table` stores the per-example (or per-group) gradients of one parameter, or of a
Linear layer's weight and bias, with a leading slot axis: :class:`DenseTable`,
:class:`FactoredTable` (``delta`` and ``a``), :class:`LowRankTable` (``u @ v`` from the
randomized SVD :func:`low_rank`). :func:`make_tables` lays a model's parameters out by
:func:`backprobe.optim.storage.table_kind`, the same rule the memory calculator
(:mod:`backprobe.optim.vr_memory`) counts with, so ``Table.nbytes`` and the calculator agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from backprobe.linalg.factorizations.randomized_svd import batched_low_rank
from backprobe.optim.storage import Factored, LowRank, Partition, Storage, table_kind


class Table:
    """Stored gradients of one parameter (or a Linear layer's weight and bias).

    Entries are table-specific tuples of tensors with a leading slot axis; the optimizer
    only gets them (:meth:`get`), makes them from a batch (:meth:`make`), sums them with
    weights into dense parameter-shaped tensors (:meth:`weighted_sum`) and sets them.
    """

    kind = ""

    def __init__(self, params: list[int], tensors: dict[str, Tensor]) -> None:
        self.params = params  # positions in the optimizer's flat parameter list
        self.tensors = tensors

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def get(self, slots: Tensor) -> tuple[Tensor, ...]:
        """Entries of ``slots``."""
        return tuple(t[slots] for t in self.tensors.values())

    def set(self, slots: Tensor, entries: tuple[Tensor, ...]) -> None:
        """Overwrite ``slots`` with ``entries``."""
        for t, e in zip(self.tensors.values(), entries):
            t[slots] = e

    def make(self, batch: BatchGradients) -> tuple[Tensor, ...]:
        """Entries of the batch's unique slots from the recorded per-example gradients."""
        raise NotImplementedError

    def weighted_sum(self, entries: tuple[Tensor, ...], w: Tensor | None) -> list[Tensor]:
        """``sum_k w_k entry_k`` per parameter (``w=None``: all ones), dense.

        (``[O, I]`` for a matrix sketch: reshape to the parameter.)
        """
        raise NotImplementedError

    def state(self) -> dict[str, object]:
        """What ``state_dict`` keeps."""
        return {"kind": self.kind, "params": list(self.params),
                "tensors": {k: v.clone() for k, v in self.tensors.items()}}


class DenseTable(Table):
    """Every stored parameter flattened side by side: ``[S, sum of numels]``.

    One gather, one scatter and one sum per step serve all of them.
    """

    kind = "dense"

    def make(self, batch: BatchGradients) -> tuple[Tensor, ...]:
        rows = [batch.dense(i, scaled=False).flatten(1) for i in self.params]
        whole = all(r.stride(0) == 0 for r in rows)  # one whole group read from p.grad
        if whole:
            rows = [r[:1] for r in rows]
        flat = (torch.cat(rows, dim=1) if len(rows) > 1 else rows[0].clone()).mul_(batch.scale)
        return (flat if whole else batch.group_mean(flat),)

    def weighted_sum(self, entries: tuple[Tensor, ...], w: Tensor | None) -> list[Tensor]:
        v = entries[0]
        total = v.sum(0) if w is None else torch.tensordot(w.to(v), v, dims=1)
        return list(total.split(self.numels()))

    def numels(self) -> list[int]:
        """Columns of each parameter."""
        return self._numels

    def __init__(self, params: list[int], tensors: dict[str, Tensor], numels: list[int]):
        super().__init__(params, tensors)
        self._numels = numels

    def state(self) -> dict[str, object]:  # noqa: D102
        return {**super().state(), "numels": list(self._numels)}


class FactoredTable(Table):
    """A Linear layer: ``delta [S, O]`` and ``a [S, I]``; weight ``delta a^T``, bias ``delta``."""

    kind = "factored"

    def make(self, batch: BatchGradients) -> tuple[Tensor, ...]:
        if batch.duplicates:
            raise ValueError(
                "Factored storage keeps one rank-one gradient per example: indices must be "
                "distinct within a batch (use Dense() or Partition for repeated indices)"
            )
        delta, a = batch.factors(self.params[0])
        return batch.group_mean(delta * batch.scale), batch.group_mean(a)

    def weighted_sum(self, entries: tuple[Tensor, ...], w: Tensor | None) -> list[Tensor]:
        delta, a = entries
        wd = delta if w is None else delta * w.to(delta)[:, None]
        out = [wd.T @ a]
        if len(self.params) == 2:
            out.append(wd.sum(0))
        return out


class LowRankTable(Table):
    """``u [S, O, r]`` (singular values folded in) and ``v [S, r, I]``: entry ``u @ v``."""

    kind = "lowrank"

    def __init__(self, params: list[int], tensors: dict[str, Tensor], spec: LowRank,
                 generator: torch.Generator) -> None:
        super().__init__(params, tensors)
        self.spec = spec
        self.generator = generator

    def make(self, batch: BatchGradients) -> tuple[Tensor, ...]:
        m = batch.group_mean(batch.dense(self.params[0])).flatten(2)
        return low_rank(m, self.spec.rank, self.spec.oversample, self.spec.power_iters,
                        self.generator)

    def weighted_sum(self, entries: tuple[Tensor, ...], w: Tensor | None) -> list[Tensor]:
        u, v = entries
        n, o, r = u.shape
        uw = (u if w is None else u * w.to(u)[:, None, None]).permute(1, 0, 2)
        uw = uw.reshape(o, n * r)
        return [uw @ v.reshape(n * r, -1)]


def low_rank(
    m: Tensor, rank: int, oversample: int = 8, power_iters: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Batched randomized SVD: ``m [B, O, I] ~ u @ v`` with ``u [B, O, rank]``, ``v [B, rank, I]``.

    :func:`backprobe.linalg.factorizations.randomized_svd.batched_low_rank` (Halko, Martinsson
    & Tropp 2011, Alg. 4.4 and 5.1: ``rank + oversample`` Gaussian columns shared by the
    batch, ``power_iters`` subspace iterations, top triplets from the small Gram matrix) with
    the singular values folded into ``u``. Exact when ``rank + oversample >= min(O, I)``;
    zero-padded where fewer than ``rank`` directions exist.
    """
    res = batched_low_rank(m, rank, oversample, power_iters, generator)
    return res.u * res.s[:, None, :], res.vh


# -- what one step recorded -----------------------------------------------------------------


class BatchGradients:
    """The recorded per-example gradients of one batch, in the units of ``grad f_i``.

    Args:
        params: the optimizer's flat parameter list.
        slots: slot of each batch example (``[B]``).
        scale: factor from the recorded terms to per-example gradients (``B`` under a
            mean-reduced loss, ``1`` under a sum).
    """

    def __init__(
        self, params: Sequence[Tensor], slots: Tensor, scale: float, whole_group: bool = False
    ) -> None:
        self.param_list = params
        self.whole_group = whole_group
        self.slots, self.inverse, self.counts = torch.unique(
            slots, return_inverse=True, return_counts=True
        )
        self.b = int(slots.numel())
        self.duplicates = int(self.slots.numel()) != self.b
        if not self.duplicates:  # keep the batch order: entries are the rows themselves
            self.slots, self.inverse = slots, torch.arange(self.b)
        self.scale = scale

    def recorded(self, i: int) -> Tensor | tuple[Tensor, ...] | None:
        """What ``record`` left on parameter ``i``: ``grad_batch_factors`` or ``grad_batch``."""
        p = self.param_list[i]
        for name in ("grad_batch_factors", "grad_batch"):
            v = getattr(p, name, None)
            if v is not None:
                rows = v[0].shape[0] if isinstance(v, tuple) else v.shape[0]
                if rows != self.b:
                    raise ValueError(
                        f"parameter {i} {tuple(p.shape)}: p.{name} has {rows} examples but "
                        f"indices has {self.b}; record and step on the same batch"
                    )
                return v
        return None

    def factors(self, i: int) -> tuple[Tensor, Tensor]:
        """``(delta [B, O], a [B, I])`` of a factored Linear weight."""
        v = self.recorded(i)
        if not isinstance(v, tuple) or len(v) != 2:
            raise ValueError(
                f"parameter {i} of shape {tuple(self.param_list[i].shape)} has no "
                "p.grad_batch_factors: its Linear layer was not recorded this step in factored "
                "form; run the backward inside the optimizer's record(model) (or "
                "backprobe.record(model, BatchGradFactors())) before step(indices)"
            )
        return v[0], v[1]

    def dense(self, i: int, scaled: bool = True) -> Tensor:
        """``[B, *shape]`` per-example gradients (built from factors where those were kept).

        ``scaled=False``: the recorded terms as they are (the caller scales).
        """
        v = self.recorded(i)
        p = self.param_list[i]
        if v is None and self.whole_group and p.grad is not None:
            # the batch is exactly one group: its mean gradient is p.grad itself
            mean = p.grad * ((self.scale if scaled else 1.0) / self.b)
            return mean.unsqueeze(0).expand(self.b, *p.shape)
        if v is None:
            raise ValueError(
                f"parameter {i} of shape {tuple(p.shape)} has no p.grad_batch: it was not "
                "recorded this step; run the backward inside the optimizer's record(model) (or "
                "backprobe.record(model, BatchGrad())) before step(indices)"
            )
        if isinstance(v, tuple):
            v = v[0] if len(v) == 1 else v[0][:, :, None] * v[1][:, None, :]
        return v * self.scale if scaled else v

    def group_mean(self, rows: Tensor) -> Tensor:
        """``[U, ...]`` means of the rows of each slot of ``self.slots``.

        The rows themselves when the slots are distinct.
        """
        u = int(self.slots.numel())
        if u == 1 and rows.dim() > 0 and rows.stride(0) == 0:  # p.grad of a whole group
            return rows[:1].clone()
        if not self.duplicates:
            return rows
        inverse = self.inverse.to(rows.device)
        total = rows.new_zeros(u, *rows.shape[1:]).index_add_(0, inverse, rows)
        return total / self.counts.to(rows).view(-1, *[1] * (rows.dim() - 1))


def make_tables(
    spec: Storage, params: Sequence[Tensor], slots: int, recorded: BatchGradients | None,
    generator: torch.Generator,
) -> list[Table]:
    """Tables for ``params`` under ``spec`` (Linear factors where ``recorded`` has them)."""
    inner = spec.inner if isinstance(spec, Partition) else spec
    factored: dict[int, int] = {}  # weight position -> bias position (or -1)
    if recorded is not None and isinstance(spec, (Factored, LowRank)):
        deltas = {}
        for i in range(len(params)):
            v = recorded.recorded(i)
            if isinstance(v, tuple) and len(v) == 2:
                factored[i] = -1
                deltas[id(v[0])] = i
        for i in range(len(params)):
            v = recorded.recorded(i)
            if isinstance(v, tuple) and len(v) == 1 and id(v[0]) in deltas:
                factored[deltas[id(v[0])]] = i
    biases = {b for b in factored.values() if b >= 0}
    tables: list[Table] = []
    dense: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, p in enumerate(params):
        if i in biases or not p.requires_grad:
            continue

        def zeros(*shape: int, p: Tensor = p) -> Tensor:
            return torch.zeros(shape, dtype=p.dtype, device=p.device)

        kind = table_kind(spec, p.shape, factored=i in factored)
        if kind == "factored":
            o, d_in = p.shape
            pos = [i] if factored[i] < 0 else [i, factored[i]]
            tables.append(FactoredTable(pos, {
                "delta": zeros(slots, o), "a": zeros(slots, d_in)
            }))
        elif kind == "lowrank":
            assert isinstance(inner, LowRank)
            o, d_in = p.shape[0], p[0].numel()
            tables.append(LowRankTable([i], {
                "u": zeros(slots, o, inner.rank), "v": zeros(slots, inner.rank, d_in),
            }, inner, generator))
        else:
            dense.setdefault((p.dtype, p.device), []).append(i)
    for (dtype, device), pos in dense.items():
        numels = [params[i].numel() for i in pos]
        value = torch.zeros(slots, sum(numels), dtype=dtype, device=device)
        tables.append(DenseTable(pos, {"value": value}, numels))
    return tables


def table_from_state(
    state: dict[str, object], spec: Storage, generator: torch.Generator
) -> Table:
    """Rebuild a table from :meth:`Table.state`."""
    tensors = {k: v.clone() for k, v in state["tensors"].items()}  # type: ignore[attr-defined]
    params = list(state["params"])  # type: ignore[call-overload]
    kind = state["kind"]
    if kind == "dense":
        return DenseTable(params, tensors, list(state["numels"]))  # type: ignore[call-overload]
    if kind == "factored":
        return FactoredTable(params, tensors)
    if kind == "lowrank":
        inner = spec.inner if isinstance(spec, Partition) else spec
        if not isinstance(inner, LowRank):
            raise ValueError(f"state has low-rank tables but the storage is {spec!r}")
        return LowRankTable(params, tensors, inner, generator)
    raise ValueError(f"unknown table kind {kind!r} in state")

