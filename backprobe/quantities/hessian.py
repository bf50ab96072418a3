"""Diagonal of the loss Hessian: exact for piecewise-linear networks, Hutchinson for any.

``DiagHessian`` (``p.diag_h``): the Hessian is ``G + sum_k (dL/df_k) d^2 f_k / d theta^2``.
When every parameter enters the network output piecewise linearly (the other parameters
fixed), the second term has a zero diagonal almost everywhere and ``diag(H) = diag(G)``
exactly. That holds when the only parameter-free modules are piecewise linear (ReLU,
LeakyReLU, max/average pooling, flatten, dropout, padding, identity), BatchNorm is in eval
mode, and no parametrised module is used twice in one forward. ``record`` checks the
modules it can see and raises a ``ValueError`` otherwise; functional calls inside
``forward`` (e.g. ``torch.tanh``) are invisible to it and are the caller's responsibility.
Computed from the exact GGN columns (shared with the other exact GGN quantities).

``HutchinsonDiagHessian`` (``p.diag_h_hutchinson``): for any differentiable network,
``diag(H) = E[z * (H z)]`` with Rademacher ``z`` (``E[z z^T] = I``), so

    diag_h_hutchinson = (1/K) sum_k z_k * (H z_k)

is unbiased; ``H z`` is a Hessian-vector product by double backward (``K`` of them; cost
about ``2 K`` backward passes). Variance per entry: ``sum_{j != i} H_ij^2 / K``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backprobe._random import private_generator
from backprobe.layers import OPS
from backprobe.linalg._operator import MatrixFree
from backprobe.linalg.diagonals.hutchinson import hutchinson_diag
from backprobe.quantities._base import Quantity
from backprobe.quantities.curvature import DiagGGNExact

#: Parameter-free modules through which the network stays piecewise linear.
PIECEWISE_LINEAR: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.PReLU, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.Flatten,
    nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.ZeroPad2d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.Sequential, nn.ModuleList,
)


def _linear_in_input() -> tuple[type[nn.Module], ...]:
    """Registered parametrised modules whose output is affine in their input."""
    return tuple(t for t, spec in OPS.items() if spec.linear_in_input)


class DiagHessian(DiagGGNExact):
    """Exact Hessian diagonal ``p.diag_h`` for piecewise-linear networks (see module doc)."""

    savefield = "diag_h"

    @staticmethod
    def check_model(model: nn.Module) -> None:
        """Raise a ``ValueError`` naming the first module that breaks piecewise linearity."""
        for name, m in model.named_modules():
            if m is model and not isinstance(m, PIECEWISE_LINEAR):
                continue  # the container itself
            if isinstance(m, PIECEWISE_LINEAR + _linear_in_input()):
                continue
            if next(m.children(), None) is not None and not any(
                True for _ in m.parameters(recurse=False)
            ):
                continue  # a container: its children are checked
            raise ValueError(
                f"DiagHessian: module '{name}' ({type(m).__name__}) is not piecewise linear, so "
                "the Hessian diagonal differs from the GGN diagonal; use HutchinsonDiagHessian"
            )


class HutchinsonDiagHessian(Quantity):
    """Hutchinson estimate of the Hessian diagonal in ``p.diag_h_hutchinson``.

    Works for any twice-differentiable network (no per-layer code; needs ``loss_fn`` so the
    loss value is seen). Unbiased; see the module docstring for its variance.

    Args:
        samples: number ``K`` of Rademacher probes.
        seed: seed of the private generator (default: drawn once from the global RNG).
    """

    savefield = "diag_h_hutchinson"
    needs_input = False
    accumulates: str | None = "sum"

    def __init__(self, samples: int = 1, seed: int | None = None) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples = samples
        self.generator = private_generator(seed)

    def compute(self, loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
        """The estimate for each of ``params`` by :func:`backprobe.linalg.hutchinson_diag`.

        The Hessian's products are double backwards through ``loss``'s graph.
        """
        grads = torch.autograd.grad(loss, params, create_graph=True)
        sizes = [p.numel() for p in params]

        def hvp(v: Tensor) -> Tensor:  # [P, k] -> [P, k], one double backward per column
            cols = []
            for z in v.unbind(1):
                zs = [c.view_as(p) for c, p in zip(z.split(sizes), params)]
                hz = torch.autograd.grad(grads, params, zs, retain_graph=True,
                                         allow_unused=True)
                cols.append(torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1)
                                       for h, p in zip(hz, params)]))
            return torch.stack(cols, 1)

        op = MatrixFree(hvp, sum(sizes), dtype=params[0].dtype, device=params[0].device)
        est = hutchinson_diag(op, self.samples, generator=self.generator)
        return [c.view_as(p) for c, p in zip(est.value.split(sizes), params)]

    def __repr__(self) -> str:
        return f"HutchinsonDiagHessian(samples={self.samples})"
