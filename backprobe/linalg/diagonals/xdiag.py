"""XDiag (Epperly, Tropp & Webber, SIMAX 2024): exchangeable deflated diagonal estimate.

With ``s = m/2`` Rademacher probes, ``Y = A W = Q R`` and, for each ``i``, the basis
``Q_i`` of the sketch without ``y_i`` (``Q_i Q_i^T = Q (I - s_i s_i^T) Q^T``, ``s_i`` the
normalised ``i``-th column of ``R^{-T}``):

    d_i = diag(Q_i Q_i^T A) + w_i * ((I - Q_i Q_i^T) A w_i) / w_i^2

is unbiased (``w_i`` is independent of ``Q_i``); XDiag returns ``mean_i d_i`` with entrywise
standard errors ``std_i(d_i) / sqrt(s)``. ``diag(Q_i Q_i^T A)`` needs ``A^T Q``: the
operator's adjoint (itself when symmetric). Matvecs: ``s`` for ``Y`` and ``s`` for ``A^T Q``.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(40, 5, dtype=torch.float64, generator=g)
    >>> est = xdiag(x @ x.T, 12, generator=0)  # rank 5 < s = 6: the sketch captures all
    >>> bool(torch.allclose(est.value, (x * x).sum(1)))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator, draw_block
from backprobe.linalg._results import DiagonalEstimate, Stopping, check_matvecs
from backprobe.linalg.diagonals.hutchinson import diagonal_done, entrywise_mean_and_error
from backprobe.linalg.traces.xtrace import extend_basis, loo_directions


def _xdiag_samples(w: Tensor, aw: Tensor, q: Tensor, r: Tensor, atq: Tensor) -> Tensor:
    """The ``s`` leave-one-out estimates ``d_i`` as columns ``[n, s]``."""
    s = loo_directions(r)
    qs, atqs = q @ s, atq @ s
    base = (q * atq).sum(1, keepdim=True)          # diag(Q Q^T A)
    exact = base - qs * atqs                        # diag(Q_i Q_i^T A)
    qta_w = atq.mT @ w                              # Q^T A w_i
    c = qta_w - s * (s * qta_w).sum(0)
    resid = aw - q @ c                              # (I - Q_i Q_i^T) A w_i
    return exact + w * resid / (w * w)


def xdiag(
    A: Any, num_matvecs: int, *, generator: torch.Generator | int | None = None,
    rtol: float | None = None, atol: float | None = None, max_matvecs: int | None = None,
    distribution: str = "rademacher",
) -> DiagonalEstimate:
    """XDiag diagonal estimate (see the module docstring).

    Args:
        A: square operator with an adjoint (symmetric, a tensor, or ``MatrixFree(adjoint=)``).
        num_matvecs: even, ``>= 4``, at most ``2 n``.
        generator: private generator or seed.
        rtol: adaptive: add ``num_matvecs / 2`` probes at a time until
            ``||std_error||_2 <= max(atol, rtol ||d||_2)``.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances (default ``2 n``).
        distribution: only ``"rademacher"`` (XDiag divides by ``w_i^2``).

    Returns:
        :class:`~backprobe.linalg.DiagonalEstimate`.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs`` odd, ``< 4`` or ``> 2n``, another
            distribution.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 4, "xdiag", multiple=2)
    if distribution != "rademacher":
        raise ValueError(f"xdiag uses Rademacher probes, got distribution={distribution!r}")
    n = op.shape[0]
    if num_matvecs // 2 > n:
        raise ValueError(f"xdiag: num_matvecs/2 = {num_matvecs // 2} probes exceed the "
                         f"dimension {n}")
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 2 * n)
    gen = as_generator(generator)
    k = num_matvecs // 2
    w = aw = q = atq = torch.zeros(n, 0, dtype=op.dtype, device=op.device)
    r = torch.zeros(0, 0, dtype=op.dtype, device=op.device)
    spent = 0
    while True:
        w_new = draw_block(n, k, "rademacher", gen, op.dtype, op.device)
        aw_new = op.matmat(w_new)
        q2, c, r2 = extend_basis(q if q.shape[1] else None, aw_new)
        k0 = r.shape[0]
        r_big = r.new_zeros(k0 + k, k0 + k)
        r_big[:k0, :k0], r_big[:k0, k0:], r_big[k0:, k0:] = r, c, r2
        r = r_big
        w, aw = torch.cat([w, w_new], 1), torch.cat([aw, aw_new], 1)
        q, atq = torch.cat([q, q2], 1), torch.cat([atq, op.rmatmat(q2)], 1)
        spent += 2 * k
        value, err = entrywise_mean_and_error(_xdiag_samples(w, aw, q, r, atq))
        if diagonal_done(stop, value, err, spent, num_matvecs) or q.shape[1] + k > n:
            return DiagonalEstimate(value, err, spent, "xdiag")
