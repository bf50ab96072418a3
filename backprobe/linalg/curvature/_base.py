"""Common machinery of the curvature operators: parameters, data, reductions, functional calls.

Conventions (curvlinops' and BackPACK's): for data ``D = {(x_n, y_n)}`` the empirical risk is

    L(theta) = c sum_n l(f_theta(x_n), y_n),   c = 1/N (``reduction="mean"``) or 1 (``"sum"``)

with ``N`` the number of examples over *all* batches; the operators are curvature matrices of
``L``: a batch with ``N_b`` examples enters with weight ``N_b / N`` under ``"mean"`` (so one
batch of the whole data and the same data in batches give the same operator). Vectors are
flat ``[P]`` in the order of ``params`` (each parameter flattened row-major), blocks
``[P, k]``. The model must be deterministic (``model.eval()``, no dropout).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from backprobe.linalg._operator import LinearOperator

Batch = tuple[Any, Tensor]


def batches_of(data: Any) -> Sequence[Batch] | Iterable[Batch]:
    """``data`` as a re-iterable collection of ``(x, y)`` batches.

    Raises:
        TypeError: a one-shot iterator (a generator): it could be traversed only once.
    """
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
        return [data]
    if iter(data) is data:
        raise TypeError("data must be re-iterable (a list or a DataLoader), not a one-shot "
                        "iterator: every product traverses it again; wrap it in list(...)")
    return data


class CurvatureOperator(LinearOperator):
    """A curvature matrix of ``loss_fn(model(x), y)`` over ``data`` (see the module docstring).

    Args:
        model: the network.
        loss_fn: loss module (``CrossEntropyLoss``, ``MSELoss``, ...) with
            ``reduction`` ``"mean"`` or ``"sum"``.
        data: one batch ``(x, y)`` or a re-iterable of batches (list, ``DataLoader``).
        params: the parameters the matrix is taken over (default: all that require grad),
            a subset gives the corresponding block.
    """

    symmetric = True

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, data: Any,
        params: Sequence[nn.Parameter] | None = None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.data = batches_of(data)
        reduction = getattr(loss_fn, "reduction", None)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_fn must have reduction 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        named = {id(p): name for name, p in model.named_parameters()}
        plist = [p for p in model.parameters() if p.requires_grad] if params is None \
            else list(params)
        if not plist:
            raise ValueError("no parameters: pass params= or unfreeze some")
        for p in plist:
            if id(p) not in named:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not in the model")
        self.params = plist
        self.names = [named[id(p)] for p in plist]
        self.sizes = [p.numel() for p in plist]
        size = sum(self.sizes)
        self.shape = (size, size)
        self.dtype, self.device = plist[0].dtype, plist[0].device
        self._num_data: int | None = None

    # -- data ----------------------------------------------------------------------------
    @property
    def num_data(self) -> int:
        """``N``, the number of examples in ``data`` (counted once)."""
        if self._num_data is None:
            self._num_data = sum(len(y) for _, y in self.data)
            if self._num_data == 0:
                raise ValueError("data holds no examples")
        return self._num_data

    def weight(self, y: Tensor) -> float:
        """Weight of a batch with targets ``y`` in the whole-data matrix."""
        return len(y) / self.num_data if self.reduction == "mean" else 1.0

    # -- functional model ----------------------------------------------------------------
    def forward_fn(self, x: Any) -> Any:
        """``f(*params) -> model output`` on ``x`` (the other parameters stay fixed)."""
        def f(*ps: Tensor) -> Tensor:
            return functional_call(self.model, dict(zip(self.names, ps)), (x,))
        return f

    def primals(self) -> tuple[Tensor, ...]:
        """Detached parameter values."""
        return tuple(p.detach() for p in self.params)

    def split(self, v: Tensor) -> tuple[Tensor, ...]:
        """``[P, k]`` -> per-parameter ``[k, *p.shape]``."""
        k = v.shape[1]
        return tuple(c.mT.reshape(k, *p.shape)
                     for c, p in zip(v.split(self.sizes), self.params))

    def join(self, parts: Sequence[Tensor], k: int) -> Tensor:
        """Per-parameter ``[k, *p.shape]`` -> ``[P, k]``."""
        return torch.cat([t.reshape(k, -1) for t in parts], 1).mT

    def batch_matmat(self, x: Any, y: Tensor, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The batch's matrix (its loss reduced as ``loss_fn`` does) on per-parameter blocks."""
        raise NotImplementedError

    def _matmat(self, v: Tensor) -> Tensor:
        k = v.shape[1]
        vs = self.split(v.to(self.dtype))
        out = torch.zeros(self.shape[0], k, dtype=self.dtype, device=self.device)
        with torch.no_grad():  # torch.func transforms still differentiate inside
            for x, y in self.data:
                if len(y) == 0:
                    continue
                x = x.to(self.device) if isinstance(x, Tensor) else x
                out.add_(self.join(self.batch_matmat(x, y.to(self.device), vs), k),
                         alpha=self.weight(y))
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(P={self.shape[0]}, params={len(self.params)}, "
                f"loss={type(self.loss_fn).__name__})")

