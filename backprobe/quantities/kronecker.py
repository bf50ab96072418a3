"""Kronecker-factored GGN approximations: KFAC (Monte Carlo) and KFLR (exact factor).

Conventions are BackPACK's. For a weight with layer input ``a`` (unfolded for convolutions,
``[N, S, D_in]``) and backpropagated loss-Hessian columns ``s`` (``[M, N, S, D_out]``):

    A = (1/N) sum_{n,s} a[n,s] a[n,s]^T                        [D_in, D_in]
    G = sum_{m,n} sbar[m,n] sbar[m,n]^T,  sbar = sum_s s[m,n,s]  [D_out, D_out]

``p.kfac`` / ``p.kflr`` is ``[G, A]`` for a weight (``G (x) A`` approximates its GGN block in
the row-major ``[D_out, D_in]`` flattening) and ``[G]`` for a bias (exact GGN block of the
bias). ``G`` already contains the loss reduction's ``1/N``; ``A`` always averages over the
batch. For convolutions ``G`` is the GGN with respect to the bias, which differs from the KFC
paper by the number of output positions (BackPACK's documented choice). A Linear layer with
extra positions (``[N, S, D]`` inputs) follows the convolution convention. Grouped
convolutions and embeddings raise a ``ValueError``; normalisation layers get their exact
GGN block ``[G]`` per parameter.

KFRA (BackPACK's third variant, which backpropagates a batch-averaged Hessian through each
module's second derivative) is not provided: it needs per-module Jacobian code, which this
library does not have by design.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from backprobe.quantities._base import CurvatureQuantity
from backprobe.quantities._sites import BoundSite


class _Kron(CurvatureQuantity):
    def compute(self, bound: BoundSite, gs: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        return bound.kron(gs, type(self).__name__)

    @staticmethod
    def combine(a: dict[str, list[Tensor]], b: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        """Results of two sets of columns: ``G`` adds, the input factor ``A`` is shared."""
        return {k: [a[k][0] + b[k][0], *a[k][1:]] for k in a}


class KFAC(_Kron):
    """KFAC factors in ``p.kfac`` from ``mc_samples`` sampled loss-Hessian columns.

    Args:
        mc_samples: sampled columns per example (default 1, as BackPACK).
        seed: seed of the private generator (default: drawn once from the global RNG).
    """

    savefield = "kfac"

    def __init__(self, mc_samples: int = 1, seed: int | None = None) -> None:
        super().__init__(mc_samples, seed)


class KFLR(_Kron):
    """KFLR factors in ``p.kflr``: KFAC with the exact loss-Hessian factor."""

    savefield = "kflr"

    def __init__(self) -> None:
        super().__init__(None, seed=0)
