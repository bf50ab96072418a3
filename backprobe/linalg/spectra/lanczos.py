"""Lanczos with full reorthogonalisation, and the top eigenpairs of a symmetric operator.

Lanczos (1950) builds an orthonormal basis ``V`` of the Krylov space
``span{v, A v, ..., A^{j-1} v}`` in which ``V^T A V = T`` is tridiagonal
(``alpha`` on the diagonal, ``beta`` off it). Each new vector is orthogonalised against the
whole basis twice ("full reorthogonalisation", Parlett 1998), which keeps ``V`` orthonormal
in floating point at ``O(n j)`` extra flops per step. :func:`lanczos` runs ``p``
independent recursions at once (one block of ``p`` matvecs per step).

:func:`top_eigenpairs`: Ritz pairs ``(theta, V y)`` of ``T``; Ritz pair ``j`` has residual
``||A V y - theta V y|| = beta_last |y_last|``, and iterations continue until the ``k``
wanted pairs have residuals ``<= tol |theta_max|``. ``method="subspace"`` runs block subspace
iteration with Rayleigh-Ritz instead (Saad 2011, Alg. 5.3), one block of ``k + oversample``
matvecs per iteration; it finds the eigenvalues of largest *magnitude*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import LinearOperator, square_operator
from backprobe.linalg._probes import as_generator


@dataclass(frozen=True)
class Eigenpairs:
    """Approximate eigenpairs.

    Attributes:
        values: ``[k]`` eigenvalues, in the order asked for (largest first).
        vectors: ``[n, k]`` orthonormal eigenvectors.
        residuals: ``[k]`` residual norms ``||A v - lambda v||``.
        num_matvecs: matrix-vector products spent.
        converged: all residuals within tolerance.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: bool


def lanczos(
    op: LinearOperator, v0: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``p`` independent Lanczos recursions with full reorthogonalisation.

    Args:
        op: square symmetric operator ``[n, n]``.
        v0: ``[n, p]`` start vectors (normalised here).
        steps: Krylov dimension ``m`` (``<= n``).

    Returns:
        ``(alpha [p, m], beta [p, m], V [m, n, p])``: ``T``'s diagonal, its off-diagonal
        (``beta[:, j]`` couples steps ``j`` and ``j + 1``; the last is the residual norm),
        and the basis. A recursion that breaks down (invariant subspace found) continues
        with zero vectors: its further ``alpha`` and ``beta`` are 0, which adds
        eigenvalues of weight exactly 0 to its quadrature.
    """
    n, p = v0.shape
    basis = torch.zeros(steps, n, p, dtype=op.dtype, device=op.device)
    alpha = torch.zeros(p, steps, dtype=op.dtype, device=op.device)
    beta = torch.zeros(p, steps, dtype=op.dtype, device=op.device)
    v = v0 / torch.linalg.vector_norm(v0, dim=0, keepdim=True)
    tiny = math.sqrt(torch.finfo(op.dtype).eps)
    scale = torch.zeros(p, dtype=op.dtype, device=op.device)
    for j in range(steps):
        basis[j] = v
        w = op.matmat(v)
        alpha[:, j] = (v * w).sum(0)
        for _ in range(2):  # full reorthogonalisation, twice
            coef = torch.einsum("jnp,np->jp", basis[: j + 1], w)
            w = w - torch.einsum("jnp,jp->np", basis[: j + 1], coef)
        b = torch.linalg.vector_norm(w, dim=0)
        scale = torch.maximum(scale, alpha[:, j].abs() + b)
        alive = b > tiny * scale.clamp_min(torch.finfo(op.dtype).tiny)
        beta[:, j] = torch.where(alive, b, torch.zeros_like(b))
        v = torch.where(alive, w / torch.where(alive, b, torch.ones_like(b)), torch.zeros_like(w))
    return alpha, beta, basis


def tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    """``T [p, m, m]`` from ``alpha [p, m]`` and ``beta [p, m]`` (last entry unused)."""
    t = torch.diag_embed(alpha)
    off = torch.diag_embed(beta[:, :-1], offset=1)
    return t + off + off.mT


def _pick(values: Tensor, k: int, which: str) -> Tensor:
    key = values if which == "LA" else values.abs()
    return torch.argsort(key, descending=True)[:k]


def top_eigenpairs(
    A: Any, k: int = 1, *, method: str = "lanczos", which: str = "LA", tol: float = 1e-4,
    max_matvecs: int | None = None, oversample: int = 4,
    generator: torch.Generator | int | None = None,
) -> Eigenpairs:
    """The ``k`` largest eigenpairs of a symmetric operator (see the module docstring).

    Args:
        A: square symmetric operator (e.g. :class:`~backprobe.linalg.HessianOperator`).
        k: number of eigenpairs.
        method: ``"lanczos"`` (one matvec per step) or ``"subspace"`` (blocks of
            ``k + oversample``, largest magnitude only).
        which: ``"LA"`` largest algebraic or ``"LM"`` largest magnitude (Lanczos).
        tol: stop when every residual ``<= tol * |largest Ritz value|``.
        max_matvecs: budget (default: ``min(n, 500)`` for Lanczos, ``50 (k + oversample)``
            for subspace iteration).
        oversample: extra block vectors (subspace iteration).
        generator: private generator or seed for the start vector(s).

    Returns:
        :class:`Eigenpairs` (``converged`` says whether ``tol`` was met in the budget).

    Raises:
        ValueError: non-square ``A``, ``k`` out of ``[1, n]``, unknown ``method``/``which``.
    """
    op = square_operator(A)
    n = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' or 'LM', got {which!r}")
    gen = as_generator(generator)
    if method == "lanczos":
        return _lanczos_top(op, k, which, tol, min(n, max_matvecs or 500), gen)
    if method == "subspace":
        if which != "LM":
            which = "LM"
        b = min(n, k + oversample)
        return _subspace_top(op, k, b, tol, max_matvecs or 50 * b, gen)
    raise ValueError(f"method must be 'lanczos' or 'subspace', got {method!r}")


def _lanczos_top(
    op: LinearOperator, k: int, which: str, tol: float, budget: int, gen: torch.Generator,
) -> Eigenpairs:
    n = op.shape[0]
    v = torch.randn(n, generator=gen, dtype=op.dtype).to(op.device)
    v = v / torch.linalg.vector_norm(v)
    basis = torch.zeros(n, min(budget, 64), dtype=op.dtype, device=op.device)
    alphas: list[float] = []
    betas: list[float] = []
    check = min(2 * k + 6, budget)  # Ritz values are cheap: check early and often
    tiny = math.sqrt(torch.finfo(op.dtype).eps)
    for j in range(budget):
        if j == basis.shape[1]:  # grow the basis' storage geometrically
            more = torch.zeros(n, min(budget, 2 * j) - j, dtype=op.dtype, device=op.device)
            basis = torch.cat([basis, more], 1)
        basis[:, j] = v
        w = op.matmat(v[:, None])[:, 0]
        alphas.append(float(v @ w))
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].mT @ w)
        b = float(torch.linalg.vector_norm(w))
        betas.append(b)
        steps = j + 1
        breakdown = b <= tiny * max(abs(a) for a in alphas)
        if steps >= check or breakdown or steps == budget:
            t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            off = torch.tensor(betas[:-1], dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
            theta, y = torch.linalg.eigh(t)
            kk = min(k, steps)
            idx = _pick(theta, kk, which)
            res = (b * y[-1, idx]).abs()
            ok = bool((res <= tol * theta.abs().max()).all()) and kk == k
            if ok or breakdown or steps == budget:
                vecs = basis[:, :steps] @ y[:, idx].to(op.dtype)
                return Eigenpairs(theta[idx].to(op.dtype), vecs, res.to(op.dtype), steps, ok)
            check = steps + max(2, steps // 8)
        v = w / b
    raise AssertionError("unreachable")


def _subspace_top(
    op: LinearOperator, k: int, b: int, tol: float, budget: int, gen: torch.Generator,
) -> Eigenpairs:
    n = op.shape[0]
    q = torch.linalg.qr(torch.randn(n, b, generator=gen, dtype=op.dtype).to(op.device)).Q
    spent = 0
    while True:
        y = op.matmat(q)
        spent += b
        theta, s = torch.linalg.eigh((q.mT @ y + y.mT @ q) / 2)
        idx = _pick(theta, k, "LM")
        vecs, avecs = q @ s[:, idx], y @ s[:, idx]
        res = torch.linalg.vector_norm(avecs - vecs * theta[idx], dim=0)
        ok = bool((res <= tol * theta.abs().max()).all())
        if ok or spent + b > budget:
            return Eigenpairs(theta[idx], vecs, res, spent, ok)
        q = torch.linalg.qr(y).Q
