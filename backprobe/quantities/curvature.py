"""Generalized Gauss-Newton (GGN) quantities from backpropagated loss-Hessian factors.

With ``S[m, n]`` the columns of a symmetric factor of the loss Hessian with respect to the
model output (see :mod:`backprobe.quantities.loss_hessian`) and ``J_n`` the Jacobian of the
output of example ``n`` with respect to a parameter, the GGN is

    G = sum_n J_n^T (d^2 L / d f_n^2) J_n = sum_{m,n} v_{m,n} v_{m,n}^T,   v_{m,n} = J_n^T S[m, n].

``v_{m,n}`` is example ``n``'s "gradient" when ``S[m]`` is fed into backward instead of the
loss gradient, so autograd itself backpropagates the ``M`` columns (``torch.autograd.grad``
from the model output to every recorded layer output, in memory-bounded chunks of
columns); each layer
then forms ``v`` with the same per-example contraction as ``BatchGrad`` and the results
are summed (diagonals, Kronecker factors) or stacked (square roots) over columns. No per-module
Jacobian code exists. Exact columns: ``M`` = number of model outputs; Monte-Carlo:
``M = mc_samples`` sampled columns whose outer products are unbiased for the GGN.

Scaling as in BackPACK: the loss reduction's ``1/N`` (or ``1/numel`` for MSE/BCE) is part of
``S``, so per-example results sum to the batch result.

===================== ======================== ===================================
quantity              attribute                value
===================== ======================== ===================================
``DiagGGNExact``      ``p.diag_ggn_exact``     ``[*p.shape]``: ``diag(G)``
``DiagGGNMC``         ``p.diag_ggn_mc``        ``[*p.shape]``: MC estimate of ``diag(G)``
``BatchDiagGGNExact`` ``p.diag_ggn_exact_batch`` ``[N, *p.shape]``: ``sum_m v_{m,n}**2``
``BatchDiagGGNMC``    ``p.diag_ggn_mc_batch``  ``[N, *p.shape]``: MC version
``SqrtGGNExact``      ``p.sqrt_ggn_exact``     ``[C, N, *p.shape]``: ``v_{m,n}``
``SqrtGGNMC``         ``p.sqrt_ggn_mc``        ``[M, N, *p.shape]``: MC ``v_{m,n}``
===================== ======================== ===================================

Assumes examples do not interact in the forward pass (no BatchNorm in train mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from backprobe.quantities._base import CurvatureQuantity
from backprobe.quantities._sites import BoundSite


class _Exact(CurvatureQuantity):
    def __init__(self) -> None:
        super().__init__(None, seed=0)


class _MC(CurvatureQuantity):
    def __init__(self, mc_samples: int = 1, seed: int | None = None) -> None:
        super().__init__(mc_samples, seed)


class _Diag:
    batch = False
    accumulates: str | None = "sum"

    def compute(self, bound: BoundSite, gs: Sequence[Tensor]) -> dict[str, Tensor]:
        return bound.diag(gs, batch=self.batch)

    @staticmethod
    def combine(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        """Results of two sets of columns: sums over columns add."""
        return {k: a[k] + b[k] for k in a}


class _Sqrt:
    accumulates: str | None = "cat"
    cat_dim = 1

    def scaled(self, result: dict[str, Tensor], c: float) -> dict[str, Tensor]:
        """``sqrt(c)`` times the factor (``c * G = (sqrt(c) V)(sqrt(c) V)^T``).

        Raises:
            ValueError: for ``c < 0`` (the GGN of ``c * loss`` is then negative definite).
        """
        if c < 0:
            raise ValueError(
                f"{type(self).__name__}: the loss was scaled by {c} < 0 before backward; the "
                "GGN of a negatively scaled loss has no real square root"
            )
        return {k: v * math.sqrt(c) for k, v in result.items()}

    def compute(self, bound: BoundSite, gs: Sequence[Tensor]) -> dict[str, Tensor]:
        return bound.per_example(gs)

    @staticmethod
    def combine(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        """Results of two sets of columns: stacked along the column axis."""
        return {k: torch.cat([a[k], b[k]]) for k in a}


class DiagGGNExact(_Diag, _Exact):
    """Exact GGN diagonal in ``p.diag_ggn_exact`` (same shape as ``p``)."""

    savefield = "diag_ggn_exact"


class DiagGGNMC(_Diag, _MC):
    """Monte-Carlo GGN diagonal in ``p.diag_ggn_mc``; unbiased, ``mc_samples`` columns.

    Args:
        mc_samples: sampled columns per example (BackPACK's default 1).
        seed: seed of the private generator (default: drawn once from the global RNG).
    """

    savefield = "diag_ggn_mc"


class BatchDiagGGNExact(_Diag, _Exact):
    """Per-example exact GGN diagonals ``[N, *p.shape]`` in ``p.diag_ggn_exact_batch``."""

    savefield = "diag_ggn_exact_batch"
    batch = True
    accumulates: str | None = "cat"


class BatchDiagGGNMC(_Diag, _MC):
    """Per-example MC GGN diagonals ``[N, *p.shape]`` in ``p.diag_ggn_mc_batch``."""

    savefield = "diag_ggn_mc_batch"
    batch = True
    accumulates: str | None = "cat"


class SqrtGGNExact(_Sqrt, _Exact):
    """Exact GGN factor ``V`` (``[C, N, *p.shape]``, ``G = V V^T``) in ``p.sqrt_ggn_exact``."""

    savefield = "sqrt_ggn_exact"


class SqrtGGNMC(_Sqrt, _MC):
    """MC GGN factor ``[M, N, *p.shape]`` in ``p.sqrt_ggn_mc`` (``E[V V^T] = G``)."""

    savefield = "sqrt_ggn_mc"
