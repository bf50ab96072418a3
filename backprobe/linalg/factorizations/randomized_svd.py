"""Randomized SVD (Halko, Martinsson & Tropp, SIAM Review 2011, Algorithms 4.4 and 5.1).

``A ~ U diag(S) V^T`` of rank ``r`` from a Gaussian test matrix ``Omega`` with
``k = r + oversample`` columns:

    Q = orth(A Omega);  repeat power_iters times: Q = orth(A (orth(A^T Q)))
    B = Q^T A  (k x m);  B = U_B diag(S) V^T;  U = Q U_B

Expected error (Halko et al., Thm 10.5, ``power_iters = 0``):
``E ||A - U S V^T||_F <= (1 + r / (p - 1))^{1/2} (sum_{j > r} sigma_j^2)^{1/2}``; each power
iteration shrinks the tail's weight by the spectral gap ``(sigma_{r+1}/sigma_r)^2``.

Two paths:

* an operator (``A @ X`` products; ``A^T`` for ``B``): ``2 (power_iters + 1) k`` matvecs,
  SVD of the small ``B``;
* a tensor ``[..., n, m]`` (a batch of matrices, e.g. per-example gradients): one test
  matrix shared by the batch, and the singular triplets of ``B`` from the eigenpairs of its
  ``k x k`` Gram matrix ``B B^T`` (a batched ``eigh`` of ``k x k`` matrices is far cheaper
  than a batched SVD of ``k x m`` ones; it squares ``B``'s condition number, so singular
  values below ``1e-6 k sigma_1`` are dropped: their ``V`` rows are zero).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(30, 4, dtype=torch.float64, generator=g) @ torch.randn(
    ...     4, 20, dtype=torch.float64, generator=g)
    >>> approx = low_rank(a, 4, generator=0)
    >>> bool(torch.allclose(approx.to_dense(), a))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import as_operator
from backprobe.linalg._probes import as_generator


@dataclass(frozen=True)
class LowRank:
    """``A ~ u @ diag(s) @ vh`` (batched over leading axes).

    Attributes:
        u: ``[..., n, r]`` orthonormal columns (zero columns where fewer than ``r``
            directions exist).
        s: ``[..., r]`` singular values, descending (eigenvalues for :func:`nystrom`).
        vh: ``[..., r, m]`` (``u.mT`` for :func:`nystrom`).
        num_matvecs: matrix-vector products spent (0 for the tensor path).
    """

    u: Tensor
    s: Tensor
    vh: Tensor
    num_matvecs: int

    def to_dense(self) -> Tensor:
        """``u diag(s) vh``: ``[..., n, m]``."""
        return (self.u * self.s.unsqueeze(-2)) @ self.vh


def _check(rank: int, oversample: int, power_iters: int) -> None:
    for name, v, lo in (("rank", rank, 1), ("oversample", oversample, 0),
                        ("power_iters", power_iters, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def batched_low_rank(
    m: Tensor, rank: int, oversample: int, power_iters: int, generator: torch.Generator | None,
) -> LowRank:
    """The tensor path for ``m [B, O, I]`` (see the module docstring).

    The test matrix is ``torch.randn(I, k, generator=generator, dtype=m.dtype)`` drawn on
    the CPU (``generator=None``: the global RNG, as torch's own samplers).
    """
    b, o, i = m.shape
    k = min(rank + oversample, o, i)
    omega = torch.randn(i, k, generator=generator, dtype=m.dtype).to(m.device)
    q = torch.linalg.qr(m @ omega).Q  # [B, O, k]
    for _ in range(power_iters):
        q = torch.linalg.qr(m.mT @ q).Q  # [B, I, k]
        q = torch.linalg.qr(m @ q).Q
    small = q.mT @ m  # [B, k, I]
    r = min(rank, k)
    evals, evecs = torch.linalg.eigh(small @ small.mT)  # ascending
    top = evecs[..., -r:].flip(-1)  # [B, k, r]
    sv = evals[:, -r:].flip(-1).clamp_min(0).sqrt()  # [B, r]
    vh = top.mT @ small  # [B, r, I] = diag(sv) @ V^T
    inv = torch.where(sv > sv[:, :1] * 1e-6 * k, 1 / sv, torch.zeros_like(sv))
    vh = vh * inv[..., None]
    u = q @ top
    if r < rank:  # fewer triplets exist than asked: zero-pad so shapes stay fixed
        u = torch.cat([u, u.new_zeros(b, o, rank - r)], dim=2)
        sv = torch.cat([sv, sv.new_zeros(b, rank - r)], dim=1)
        vh = torch.cat([vh, vh.new_zeros(b, rank - r, i)], dim=1)
    return LowRank(u, sv, vh, 0)


def low_rank(
    A: Any, rank: int, *, oversample: int = 10, power_iters: int = 2,
    generator: torch.Generator | int | None = None,
) -> LowRank:
    """Randomized SVD of rank ``rank`` (see the module docstring).

    Args:
        A: operator ``[n, m]`` with an adjoint (tensor, symmetric operator,
            ``MatrixFree(adjoint=)``, scipy ``LinearOperator``), or a tensor ``[..., n, m]``
            of more than two dimensions (a batch, handled by the Gram-``eigh`` path).
        rank: rank ``r >= 1`` of the result.
        oversample: extra test vectors ``p`` (``k = r + p``).
        power_iters: subspace iterations ``q`` (each costs ``2k`` matvecs).
        generator: private generator or seed (tensor path: ``None`` uses the global RNG).

    Returns:
        :class:`LowRank` with ``u [.., n, r]``, ``s [.., r]``, ``vh [.., r, m]``.

    Raises:
        ValueError: bad ``rank``, ``oversample`` or ``power_iters``.
        TypeError: an operator without adjoint.
    """
    _check(rank, oversample, power_iters)
    if isinstance(A, Tensor) and A.dim() >= 3:
        gen = None if generator is None else as_generator(generator)
        lead = A.shape[:-2]
        res = batched_low_rank(A.reshape(-1, *A.shape[-2:]), rank, oversample, power_iters,
                               gen)
        return LowRank(res.u.reshape(*lead, *res.u.shape[-2:]), res.s.reshape(*lead, -1),
                       res.vh.reshape(*lead, *res.vh.shape[-2:]), 0)
    op = as_operator(A)
    gen = as_generator(generator)
    n, m = op.shape
    k = min(rank + oversample, n, m)
    omega = torch.randn(m, k, generator=gen, dtype=op.dtype).to(op.device)
    q = torch.linalg.qr(op.matmat(omega)).Q
    spent = k
    for _ in range(power_iters):
        q = torch.linalg.qr(op.rmatmat(q)).Q
        q = torch.linalg.qr(op.matmat(q)).Q
        spent += 2 * k
    bt = op.rmatmat(q)  # [m, k] = (Q^T A)^T
    spent += k
    ub, s, vh = torch.linalg.svd(bt.mT, full_matrices=False)
    r = min(rank, k)
    u, s, vh = q @ ub[:, :r], s[:r], vh[:r]
    if r < rank:
        u = torch.cat([u, u.new_zeros(n, rank - r)], 1)
        s = torch.cat([s, s.new_zeros(rank - r)])
        vh = torch.cat([vh, vh.new_zeros(rank - r, m)], 0)
    return LowRank(u, s, vh, spent)
