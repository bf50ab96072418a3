"""Kronecker-factored GGN approximations: KFAC (Monte Carlo), KFLR (exact factor), KFRA.

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

KFRA (:class:`KFRA`, BackPACK's third variant, Botev et al. 2017) replaces ``G`` by one
built from a batch-averaged GGN backpropagated through the network instead of per-example
factors; see its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from backprobe.quantities._base import CurvatureQuantity
from backprobe.quantities._sites import BoundSite


def _scale_first(result: dict[str, list[Tensor]], c: float) -> dict[str, list[Tensor]]:
    """``c`` times the output factor ``G`` (``c * (G (x) A) = (c G) (x) A``)."""
    return {k: [v[0] * c, *v[1:]] for k, v in result.items()}


class _Kron(CurvatureQuantity):
    def scaled(self, result: dict[str, list[Tensor]], c: float) -> dict[str, list[Tensor]]:
        """``c`` times ``G``."""
        return _scale_first(result, c)

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


class KFRA(CurvatureQuantity):
    """KFRA factors in ``p.kfra``: ``G`` from a batch-averaged GGN backpropagated layer by layer.

    Botev, Ritter, Barber, "Practical Gauss-Newton Optimisation for Deep Learning" (ICML
    2017), with BackPACK's conventions. Let ``o_1, ..., o_K`` be the recorded layer outputs
    in forward order (one example's output has ``D_k`` numbers), ``f`` the model output and
    ``H_n`` the Hessian of the loss (its reduction's ``1/N`` included) with respect to
    ``f_n``. The batch-averaged GGN is backpropagated from ``f`` to ``o_K``, then from one
    recorded output to the previous one:

        Gbar_f   = sum_n H_n                                           [D_f, D_f]
        Gbar_K   = (1/N) sum_n J_n^T Gbar_f J_n,      J_n = d f_n / d o_K,n
        Gbar_k   = (1/N) sum_n J_n^T Gbar_{k+1} J_n,  J_n = d o_{k+1},n / d o_k,n

    (Jacobians only: the nonlinearities' second derivatives are dropped, as in the GGN).
    ``J_n`` is the Jacobian of the whole block between two recorded outputs (activations,
    pooling, flattening, dropout...), obtained with autograd: ``Gbar = L L^T`` is factored
    by an eigendecomposition and each column of ``L``, broadcast over the batch, is pulled
    back with one batched vector-Jacobian product, which yields ``J_n^T L`` for every example
    at once. A layer's factors are then those of KFLR with ``Gbar`` in place of the
    per-example columns:

        G = sum_{s,t} Gbar[(:, s), (:, t)]      (output positions summed, as KFLR's ``sbar``)
        A = (1/N) sum_{n,s} a[n,s] a[n,s]^T     (as KFLR)

    so ``p.kfra`` is ``[G, A]`` for a Linear/Conv weight and ``[G]`` for a bias, and at batch
    size 1 KFRA equals KFLR. Generally, for a parameter with per-example output Jacobian
    ``B_n`` the result is ``(1/N) sum_n B_n^T Gbar B_n``, Kronecker-factored for weights;
    normalisation layers get this ``[G]`` per parameter (the KFRA analogue of what KFAC and
    KFLR give them). When the last recorded layer produces the model output, its ``G``
    equals KFLR's at any batch size.

    Differences from BackPACK: BackPACK averages over the batch after *each* module, we
    average over the per-example Jacobian of the whole block between two parametrised
    layers (the paper's layer = affine map + activation). Both agree when a block holds at
    most one example-dependent Jacobian (e.g. Linear-ReLU-Linear, Conv-ReLU-AvgPool);
    they differ for, e.g., ReLU followed by max pooling. Our ``MSELoss``/``BCEWithLogitsLoss``
    ``mean`` divides by all elements, as torch does (see :mod:`.loss_hessian`).

    Limits: ``Gbar`` is dense, ``D x D`` per layer (``O(D^3)`` time per layer), so a layer
    output (or model output) with more than ``max_features`` numbers per example raises a
    ``ValueError``; use :class:`KFLR` or :class:`KFAC` there. The recorded layers must form
    a chain: a module called more than once, an output that reaches the loss bypassing the
    next recorded layer (residual connections, parallel branches) or an output that does
    not feed the next one raise a ``ValueError``. Examples must be independent (what
    ``record`` requires anyway). Grouped convolution weights and embeddings raise, as for
    KFLR.

    Args:
        max_features: largest ``D`` (numbers per example of a layer output) allowed.
    """

    savefield = "kfra"

    def scaled(self, result: dict[str, list[Tensor]], c: float) -> dict[str, list[Tensor]]:
        """``c`` times ``G``."""
        return _scale_first(result, c)

    def __init__(self, max_features: int = 4096) -> None:
        super().__init__(None, seed=0)
        if not isinstance(max_features, int) or max_features < 1:
            raise ValueError(f"max_features must be a positive int, got {max_features!r}")
        self.max_features = max_features

    def __repr__(self) -> str:
        return f"KFRA(max_features={self.max_features})"
