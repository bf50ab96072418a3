"""The generalised Gauss-Newton matrix as a linear operator (Schraudolph 2002).

    G = c sum_n J_n^T H_n J_n,   J_n = d f_theta(x_n) / d theta,   H_n = d^2 l / d f^2

Per batch: one ``torch.func.vjp`` (forward once, keeps ``J^T``), then, vectorised over the
``k`` columns with ``vmap``: ``J v`` (``jvp``), the loss Hessian on it (``jvp`` of the
loss gradient in the output, small), and ``J^T`` of that. Symmetric PSD for convex losses.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    >>> ggn = GGNOperator(model, torch.nn.MSELoss(reduction="sum"), (x, y))
    >>> bool(ggn.psd)
    True
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap

from backprobe.linalg.curvature._base import CurvatureOperator


class GGNOperator(CurvatureOperator):
    """GGN of ``loss_fn(model(x), y)`` over ``data`` (see :class:`CurvatureOperator`)."""

    psd = True

    def batch_matmat(self, x: Any, y: Tensor, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        f = self.forward_fn(x)
        ps = self.primals()
        out, pullback = vjp(f, *ps)  # type: ignore[misc]
        out = out.detach()
        loss_grad = jacrev(lambda o: self.loss_fn(o, y))

        def ggnvp(*vs: Tensor) -> tuple[Tensor, ...]:
            jv = jvp(f, ps, vs)[1]
            hjv = jvp(loss_grad, (out,), (jv,))[1]
            return pullback(hjv)

        return vmap(ggnvp)(*v)
