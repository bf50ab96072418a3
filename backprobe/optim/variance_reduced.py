"""Variance-reduced SGD (SAG, SAGA, SVRG) and Langevin samplers (SAGA-LD, SVRG-LD).

The objective is the mean ``F(theta) = (1/N) sum_i f_i(theta) (+ R(theta))`` over a data set of
``N`` examples; every direction ``d`` below estimates ``grad F``. With ``g = p.grad`` of the
batch loss (in mean units, i.e. divided by ``B`` under ``reduction="sum"``) and a table ``T``
of stored per-example gradients with exact average ``avg = (1/N) sum_i T_i``:

* SAGA (Defazio, Bach & Lacoste-Julien 2014):
  ``d = g - (1/B) sum_{i in batch} T_i + avg``, then ``T_i <- grad f_i`` for the batch.
  Unbiased for any table content, since ``E_i[T_i] = avg`` under uniform sampling.
* SAG (Schmidt, Le Roux & Bach 2017): the table is refreshed first and
  ``d = g - (1/B) sum_{i in batch} T_i + avg`` with the *new* entries; biased, lower
  variance. ``avg`` is over the examples seen so far during the first pass.
* SVRG (Johnson & Zhang 2013): every ``snapshot_every`` steps, a snapshot ``theta~`` and the
  full gradient ``mu = grad F(theta~)`` (computed by the user's callable in batches); then
  ``d = grad f_B(theta) - grad f_B(theta~) + mu``, which costs a second closure call per step
  and no table.

``g`` contains whatever the loss adds beyond the per-example terms (a regulariser): the table
only holds the data terms, so such terms pass through unchanged.

All take ``momentum``/``nesterov``/``weight_decay`` with ``torch.optim.SGD``'s meaning, so
"Nesterov SAGA" is ``SAGA(..., momentum=0.9, nesterov=True)``.

SAG and SAGA read the per-example gradients ``record`` stored on the parameters
(``p.grad_batch`` from ``BatchGrad``, or the Linear factors ``p.grad_batch_factors`` from
``BatchGradFactors``) and *consume* them (the attributes are deleted, so a step that was not
recorded raises instead of reusing stale values). Under a mean-reduced loss the recorded terms
are ``grad f_i / B`` and are multiplied by ``B``; pass ``reduction="sum"`` for a summed loss.
The table layout is chosen by ``storage`` (:mod:`backprobe.optim.storage`) at the first step,
from what was recorded.

Training loop::

    opt = SAGA(model.parameters(), lr=0.05, num_examples=len(x_train))
    for idx in batches:                        # dataset indices of each batch
        opt.zero_grad()
        with opt.record(model):                 # BatchGradFactors() under the hood
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
        opt.step(idx)

or ``torch.optim``'s closure form, the indices returned with the loss (or named first with
``opt.set_indices(idx)``, for a sampler that knows them) and the recording done by the
optimizer given ``model=``::

    opt = SAGA(model.parameters(), lr=0.05, num_examples=len(x_train), model=model)
    for idx in batches:
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            return loss, idx
        opt.step(closure)

Both forms give the same steps, bit for bit.

The Langevin versions (Dubey et al., "Variance Reduction in Stochastic Gradient Langevin
Dynamics", NeurIPS 2016) sample ``pi(theta) ∝ exp(-U(theta) / T)`` with
``U = N * F = sum_i f_i + N R``: ``theta <- theta - lr * N * d + sqrt(2 * lr * T) * xi``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.optim._base import DirectionStepper, check, evaluate
from backprobe.optim.storage import Factored, LowRank, Partition, Storage, group_sizes, slot_count
from backprobe.optim.svrg import SVRG, SVRGLD, full_gradient
from backprobe.optim.tables import BatchGradients, Table, make_tables, table_from_state
from backprobe.quantities import BatchGrad, BatchGradFactors, record

__all__ = ["SAG", "SAGA", "SAGALD", "SVRG", "SVRGLD", "full_gradient"]

_RECORDED = ("grad_batch", "grad_batch_factors")


class _TableMethod(DirectionStepper):
    """SAG and SAGA: a table of per-example gradients, see the module docstring."""

    refresh_first = False  # SAG: update the table before forming the direction

    def __init__(
        self, params: Iterable[Any], lr: float, num_examples: int, *,
        storage: Storage | None = None, reduction: str = "mean", momentum: float = 0.0,
        nesterov: bool = False, weight_decay: float = 0.0,
        generator: torch.Generator | int | None = None, seed: int | None = None,
        model: nn.Module | None = None, extra_defaults: dict[str, Any] | None = None,
    ) -> None:
        check("num_examples", num_examples, "count")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (the one whose backward the closure "
                            f"runs), got {type(model).__name__}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        storage = Factored() if storage is None else storage
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a backprobe.optim storage spec, got {storage!r}")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, generator=generator, seed=seed,
                         extra_defaults=extra_defaults)
        self.num_examples = num_examples
        self.storage = storage
        self.reduction = reduction
        self.slots = slot_count(storage, num_examples)
        self.tables: list[Table] | None = None
        self.seen: Tensor | None = None  # SAG: slots written at least once
        self._writes = 0
        self.model = model
        self._pending: Tensor | None = None  # set_indices: the next closure step's batch

    # -- user-facing helpers -------------------------------------------------------------
    def quantity(self) -> BatchGrad | BatchGradFactors:
        """What to record for this storage: ``BatchGradFactors()`` where Linear factors are kept."""
        return BatchGradFactors() if isinstance(self.storage, (Factored, LowRank)) else BatchGrad()

    def record(self, model: nn.Module, **kwargs: Any) -> record:
        """``backprobe.record(model, self.quantity(), **kwargs)``: wrap the backward in it."""
        return record(model, self.quantity(), **kwargs)

    def memory(self) -> dict[str, int]:
        """Bytes held: ``table`` (the stored gradients) and ``average`` (running sums)."""
        table = sum(t.nbytes for t in self.tables or [])
        average = sum(
            st["total"].numel() * st["total"].element_size()
            for st in self.state.values() if "total" in st
        )
        return {"table": table, "average": average}

    # -- the step ---------------------------------------------------------------------------
    def _indices(self, indices: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices)
        if idx.dim() != 1 or idx.numel() == 0 or idx.dtype.is_floating_point \
                or idx.dtype == torch.bool:
            raise ValueError(
                f"indices must be a non-empty 1-D integer tensor of dataset indices, got "
                f"shape {tuple(idx.shape)} dtype {idx.dtype}"
            )
        idx = idx.long().cpu()
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_examples:
            raise ValueError(
                f"indices must lie in [0, {self.num_examples}) (num_examples), got {lo}..{hi}"
            )
        return idx

    def set_indices(self, indices: Tensor | Sequence[int]) -> None:
        """Name the dataset indices of the next ``step(closure)`` (for closures returning a loss).

        A sampler hook: call it when the batch is drawn, then ``step(closure)`` as with any
        ``torch.optim`` optimizer. The indices are used by the next step only.

        Raises:
            ValueError: indices out of range or not a 1-D integer tensor.
        """
        self._pending = self._indices(indices)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, indices: Tensor | Sequence[int] | Callable[[], Any] | None = None,
        closure: Callable[[], Any] | None = None,
    ) -> Any:
        """One step on the batch with dataset indices ``indices``.

        Two forms give the same step:

        * ``step(indices)`` (or ``step(indices, closure)``) after a backward run inside
          ``opt.record(model)``;
        * ``step(closure)``, ``torch.optim``'s form: ``closure`` zeroes the gradients, computes
          the batch loss, calls ``backward`` and returns ``(loss, indices)``, or just the loss
          when :meth:`set_indices` named the batch first. The backward must run inside
          ``opt.record(model)``: the closure does it, or the optimizer does when it was built
          with ``model=``.

        Args:
            indices: ``[B]`` dataset indices of the batch whose gradients were recorded, or
                the closure (``step(closure)``).
            closure: re-evaluates the loss (see above) and returns it.

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError: no indices (none passed, returned or set), indices given twice and
                different, indices out of range or of the wrong length, gradients not
                recorded.
        """
        given: Tensor | Sequence[int] | None
        if callable(indices):
            if closure is not None:
                raise TypeError("step(closure) takes one closure; indices go first otherwise")
            given, closure = None, indices
        else:
            given = indices
        if closure is not None and self.model is not None:
            with self.record(self.model):
                loss = evaluate(closure)
        else:
            loss = evaluate(closure)
        if isinstance(loss, tuple):
            if len(loss) != 2:
                raise ValueError("a closure returns the loss or (loss, indices), got a tuple of "
                                 f"{len(loss)}")
            loss, returned = loss
            returned = self._indices(returned)
            if given is not None and not torch.equal(self._indices(given), returned):
                raise ValueError("step got indices twice (argument and closure) and they differ")
            given = returned
        pending, self._pending = self._pending, None  # set_indices names the next step only
        if given is None:
            given = pending
        if given is None:
            raise ValueError(
                f"{type(self).__name__}.step needs the batch's dataset indices: step(indices), "
                "a closure returning (loss, indices), or set_indices(indices) before "
                "step(closure)")
        idx = self._indices(given)
        params = self._flat()
        b = int(idx.numel())
        slots = idx // self.storage.size if isinstance(self.storage, Partition) else idx
        whole = False
        if isinstance(self.storage, Partition):
            k = int(slots[0])
            size_k = min(self.num_examples, (k + 1) * self.storage.size) - k * self.storage.size
            whole = bool((slots == k).all()) and b == size_k and \
                bool((torch.sort(idx).values == torch.arange(k * self.storage.size,
                                                            k * self.storage.size + b)).all())
        batch = BatchGradients(params, slots, float(b) if self.reduction == "mean" else 1.0,
                               whole)
        if self.tables is None:
            self.tables = make_tables(self.storage, params, self.slots, batch, self.generator)
        if self.refresh_first and self.seen is None:
            self.seen = torch.zeros(self.slots, dtype=torch.bool)
        # one example per slot (no partition, distinct indices): plain sums replace weights
        uniform = not isinstance(self.storage, Partition) and not batch.duplicates
        sizes = counts = None
        if not uniform:
            sizes = group_sizes(self.storage, self.num_examples, batch.slots)
            counts = batch.counts.to(torch.float64) / b
        directions: dict[int, Tensor] = {}
        if self.seen is not None:
            self.seen[batch.slots] = True
            seen_weight = float(group_sizes(
                self.storage, self.num_examples, self.seen.nonzero().flatten()).sum())
        for table in self.tables:
            ps = [params[i] for i in table.params]
            if all(p.grad is None for p in ps):
                continue
            old = table.get(batch.slots)
            new = table.make(batch)
            s_old, s_new = table.weighted_sum(old, sizes), table.weighted_sum(new, sizes)
            if uniform:
                used = [v / b for v in (s_new if self.refresh_first else s_old)]
            else:
                used = table.weighted_sum(new if self.refresh_first else old, counts)
            for p, sn, so, c in zip(ps, s_new, s_old, used):
                st = self.state[p]
                if "total" not in st:
                    st["total"] = torch.zeros_like(p)
                total = st["total"]
                g = torch.zeros_like(p) if p.grad is None else p.grad * (batch.scale / b)
                d = g.sub_(c.view_as(p))
                if self.refresh_first:  # SAG: the average after the refresh
                    total.add_(sn.view_as(p)).sub_(so.view_as(p))
                    d.add_(total, alpha=1 / seen_weight)
                else:  # SAGA: the average before it
                    d.add_(total, alpha=1 / self.num_examples)
                    total.add_(sn.view_as(p)).sub_(so.view_as(p))
                directions[id(p)] = d
            table.set(batch.slots, new)
        for p in params:
            for name in _RECORDED:
                if hasattr(p, name):
                    delattr(p, name)
        self._update(directions)
        self._writes += int(batch.slots.numel())
        if self._writes >= self.slots:  # once per pass: re-sum the table to stop drift
            self.resync()
        return loss

    @torch.no_grad()
    def resync(self) -> None:
        """Recompute the running sums exactly from the table (done once per pass)."""
        self._writes = 0
        if not self.tables:
            return
        params = self._flat()
        all_slots = torch.arange(self.slots)
        weights = group_sizes(self.storage, self.num_examples, all_slots)
        if self.seen is not None:
            weights = weights * self.seen.to(weights.dtype)
        for table in self.tables:
            sums = table.weighted_sum(table.get(all_slots), weights)
            for i, s in zip(table.params, sums):
                if "total" in self.state[params[i]]:
                    self.state[params[i]]["total"].copy_(s.view_as(params[i]))

    # -- state ------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        extra = super()._extra_state()
        extra["tables"] = None if self.tables is None else [t.state() for t in self.tables]
        extra["seen"] = None if self.seen is None else self.seen.clone()
        extra["writes"] = self._writes
        return extra

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        tables = extra["tables"]
        self.tables = None if tables is None else [
            table_from_state(t, self.storage, self.generator) for t in tables
        ]
        self.seen = None if extra["seen"] is None else extra["seen"].clone()
        self._writes = int(extra["writes"])


class SAGA(_TableMethod):
    """SAGA: ``d = g - mean_{i in B} T_i + avg``, then ``T_i <- grad f_i`` (unbiased).

    Args:
        params: parameters or parameter groups.
        lr: step size.
        num_examples: ``N``, the data set size (indices lie in ``[0, N)``).
        storage: how the table is kept (default ``Factored()``; see
            :mod:`backprobe.optim.storage`).
        reduction: ``"mean"`` (default) or ``"sum"``: how the recorded loss reduced the batch.
        momentum: SGD momentum on the direction; ``nesterov`` for Nesterov momentum.
        nesterov: Nesterov momentum ("Nesterov SAGA").
        weight_decay: L2 term added to the direction.
        generator: the private generator (randomized SVD of ``LowRank``): a
            ``torch.Generator``, an int seed, or ``None`` (seeded once from the global RNG).
        seed: deprecated int ``generator``.
        model: the model whose backward ``step(closure)`` runs: the optimizer then wraps the
            closure in ``record(model)`` itself (default ``None``: the closure records).

    Example:
        >>> import torch
        >>> from backprobe.optim import SAGA
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
        >>> opt = SAGA(model.parameters(), lr=0.1, num_examples=10)
        >>> idx = torch.tensor([0, 3, 5])
        >>> with opt.record(model):
        ...     torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        >>> opt.step(idx)
        >>> opt.memory()["table"]  # 10 examples x (4 + 3) float32 numbers
        280
    """


class SAG(_TableMethod):
    """SAG: refresh ``T_i`` for the batch, then step along the table's average (biased).

    Arguments as :class:`SAGA`. During the first pass the average is over the examples
    seen so far (Schmidt et al.'s practice).
    """

    refresh_first = True


class SAGALD(_TableMethod):
    """SAGA-LD: Langevin dynamics with SAGA's gradient estimate (Dubey et al. 2016).

    ``theta <- theta - lr * N * d + sqrt(2 * lr * temperature) * xi`` samples
    ``exp(-U / temperature)`` with ``U = N * F`` (the batch loss records ``F``'s terms: the
    mean negative log-likelihood of the batch plus ``1/N`` of the negative log prior).

    Args:
        params: parameters.
        lr: step size (of ``U``'s gradient).
        num_examples: ``N``.
        storage: as :class:`SAGA`.
        reduction: as :class:`SAGA`.
        temperature: ``T`` (``1`` samples the posterior).
        generator: the private generator (noise and randomized SVD), as :class:`SAGA`.
        seed: deprecated int ``generator``.
        model: as :class:`SAGA` (for ``step(closure)``).
    """

    langevin = True

    def __init__(
        self, params: Iterable[Any], lr: float, num_examples: int, *,
        storage: Storage | None = None, reduction: str = "mean", temperature: float = 1.0,
        generator: torch.Generator | int | None = None, seed: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(params, lr, num_examples, storage=storage, reduction=reduction,
                         generator=generator, seed=seed, model=model,
                         extra_defaults={"temperature": temperature, "num_examples": num_examples})
