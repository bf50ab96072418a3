"""The Hessian of the empirical risk as a linear operator.

    H = nabla^2_theta L(theta),   L = c sum_n l(f_theta(x_n), y_n)

A block of products ``H V`` per batch is one forward-over-reverse pass
(``torch.func.jvp`` of ``torch.func.jacrev``) vectorised over the ``k`` columns with
``torch.func.vmap``: one batched double-backward instead of ``k``. Symmetric, generally
indefinite.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    >>> h = HessianOperator(model, torch.nn.MSELoss(), (x, y))
    >>> h.shape
    (8, 8)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.func import jacrev, jvp, vmap

from backprobe.linalg.curvature._base import CurvatureOperator


class HessianOperator(CurvatureOperator):
    """Hessian of ``loss_fn(model(x), y)`` over ``data`` (see :class:`CurvatureOperator`)."""

    psd = False

    def batch_matmat(self, x: Any, y: Tensor, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        f = self.forward_fn(x)

        def loss(*ps: Tensor) -> Tensor:
            return self.loss_fn(f(*ps), y)

        g = jacrev(loss, argnums=tuple(range(len(v))))
        ps = self.primals()

        def hvp(*vs: Tensor) -> tuple[Tensor, ...]:
            return jvp(g, ps, vs)[1]

        return vmap(hvp)(*v)
