"""Randomized Nystrom approximation of a PSD operator.

Tropp, Yurtsever, Udell & Cevher, "Fixed-rank approximation of a positive-semidefinite matrix
from streaming data" (NeurIPS 2017), Algorithm 3: with an orthonormal test matrix ``Omega``
(``k = rank + oversample`` columns), ``Y = A Omega`` and a tiny shift ``nu``,

    A_nys = Y_nu (Omega^T Y_nu)^{-1} Y_nu^T - nu I,    Y_nu = Y + nu Omega,

computed as ``B = Y_nu C^{-1}`` with ``C^T C = Omega^T Y_nu`` (Cholesky), ``B = U S V^T``,
eigenvalues ``max(S^2 - nu, 0)``; the top ``rank`` are kept. ``k`` matvecs, one block.
Nystrom is never worse than the randomized SVD at equal matvecs for PSD matrices, and it is
PSD itself; an indefinite sketch ``Omega^T A Omega`` raises.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=g)
    >>> approx = nystrom(x @ x.T, 3, generator=0)
    >>> bool(torch.allclose(approx.to_dense(), x @ x.T))
    True
"""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator
from backprobe.linalg.factorizations.randomized_svd import LowRank, _check
from backprobe.linalg.traces.xnystrace import shifted_cholesky


def nystrom(
    A: Any, rank: int, *, oversample: int = 10, generator: torch.Generator | int | None = None,
) -> LowRank:
    """Rank-``rank`` Nystrom approximation ``A ~ U diag(lambda) U^T`` of a PSD operator.

    Args:
        A: square PSD operator.
        rank: rank ``r >= 1``.
        oversample: extra test vectors.
        generator: private generator or seed.

    Returns:
        :class:`~backprobe.linalg.LowRank` with ``u [n, r]``, eigenvalues ``s [r]``
        (descending), ``vh = u^T``.

    Raises:
        ValueError: non-square or non-PSD ``A`` (its sketch ``Omega^T A Omega`` is
            indefinite), bad ``rank``/``oversample``.
    """
    _check(rank, oversample, 0)
    op = square_operator(A)
    n = op.shape[0]
    k = min(rank + oversample, n)
    gen = as_generator(generator)
    omega = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=op.dtype).to(op.device)).Q
    y = op.matmat(omega)
    work = torch.float64 if op.dtype != torch.float64 else op.dtype
    chol, y_nu, nu = shifted_cholesky(omega.to(work), y.to(work), "nystrom", op.dtype)
    b = torch.linalg.solve_triangular(chol, y_nu.mT, upper=False).mT  # Y_nu L^{-T}
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (s * s - nu).clamp_min(0)
    r = min(rank, k)
    u, lam = u[:, :r].to(op.dtype), lam[:r].to(op.dtype)
    if r < rank:
        u = torch.cat([u, u.new_zeros(n, rank - r)], 1)
        lam = torch.cat([lam, lam.new_zeros(rank - r)])
    return LowRank(u, lam, u.mT, k)
