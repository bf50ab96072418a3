"""XTrace (Epperly, Tropp & Webber, SIMAX 2024): exchangeable Hutch++.

With ``m`` matvecs and ``s = m/2`` probes ``w_i``, ``Y = A W = Q R``. For each ``i`` let
``Q_i`` be an orthonormal basis of the sketch *without* ``y_i``; then

    t_i = tr(Q_i^T A Q_i) + w_i^T (I - Q_i Q_i^T) A (I - Q_i Q_i^T) w_i

is unbiased (``w_i`` is independent of ``Q_i``), and XTrace returns ``mean_i t_i`` with the
standard error ``std_i(t_i) / sqrt(s)`` (the paper's error estimate). Every probe serves both
as a sketch direction and as a Hutchinson probe. The leave-one-out bases come from one QR:
``Q_i Q_i^T = Q (I - s_i s_i^T) Q^T`` with ``s_i`` the normalised ``i``-th column of
``R^{-T}``, so all ``t_i`` cost ``O(n s^2)`` flops beyond the ``2s`` matvecs.

Adaptive stopping adds probes in blocks: the sketch grows by block Gram-Schmidt, so the
products ``A Q`` already spent stay valid.

Example:
    >>> q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64,
    ...                        generator=torch.Generator().manual_seed(0)))
    >>> a = q @ torch.diag(torch.arange(1, 201.0, dtype=torch.float64) ** -2) @ q.T
    >>> est = xtrace(a, 40, generator=0)
    >>> abs(est.value - float(a.trace())) < 5 * est.std_error
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import LinearOperator, square_operator
from backprobe.linalg._probes import as_generator, check_distribution
from backprobe.linalg._results import Estimate, Stopping, check_matvecs
from backprobe.linalg.traces._running import RunningTrace


def extend_basis(q: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Block Gram-Schmidt (twice): ``[q, y] = [q, q2] [[I, c], [0, r2]]``.

    Returns:
        ``(q2, c, r2)`` with ``c = q^T y`` (empty for ``q = None``), so earlier columns of
        ``q`` (and products with them) stay valid.
    """
    if q is None:
        qr = torch.linalg.qr(y)
        return qr.Q, y.new_zeros(0, y.shape[1]), qr.R
    c = q.mT @ y
    rest = y - q @ c
    c2 = q.mT @ rest
    rest = rest - q @ c2
    q2, r2 = torch.linalg.qr(rest)
    return q2, c + c2, r2


def loo_directions(r: Tensor) -> Tensor:
    """Columns ``s_i``: normalised columns of ``R^{-T}``, so ``Q_i Q_i^T = Q (I - s_i s_i^T) Q^T``.

    ``R`` is first shifted by a tiny multiple of its largest diagonal so that an exactly
    rank-deficient sketch (``A`` of low rank) stays finite.
    """
    eye = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    d = r.diagonal().abs()
    tiny = torch.finfo(r.dtype).eps * float(d.max().clamp_min(torch.finfo(r.dtype).tiny))
    sign = torch.where(r.diagonal() >= 0, 1.0, -1.0).to(r.dtype)
    r = r + torch.diag(sign * tiny * (d < tiny).to(r.dtype))
    rinv_t = torch.linalg.solve_triangular(r, eye, upper=True).mT
    return rinv_t / torch.linalg.vector_norm(rinv_t, dim=0, keepdim=True)


class XTrace(RunningTrace):
    """Running XTrace state: probes ``W``, ``A W``, basis ``Q`` with ``R``, and ``A Q``."""

    def __init__(self, op: LinearOperator, distribution: str, generator: torch.Generator):
        super().__init__(op, distribution, generator)
        n, dt, dev = op.shape[0], op.dtype, op.device
        self.w = torch.zeros(n, 0, dtype=dt, device=dev)
        self.aw, self.q, self.aq = self.w, self.w, self.w
        self.r = torch.zeros(0, 0, dtype=dt, device=dev)

    def add_block(self, w: Tensor, aw: Tensor) -> None:
        """Add probes ``w`` with known products ``aw``; spends ``k`` matvecs on ``A Q``."""
        q2, c, r2 = extend_basis(self.q if self.q.shape[1] else None, aw)
        k0, k = self.r.shape[0], w.shape[1]
        r = self.r.new_zeros(k0 + k, k0 + k)
        r[:k0, :k0], r[:k0, k0:], r[k0:, k0:] = self.r, c, r2
        self.r = r
        self.w, self.aw = torch.cat([self.w, w], 1), torch.cat([self.aw, aw], 1)
        self.q = torch.cat([self.q, q2], 1)
        self.aq = torch.cat([self.aq, self.op.matmat(q2)], 1)
        self.spent += k

    def samples(self) -> Tensor:
        """The ``s`` leave-one-out estimates ``t_i``."""
        q, aq, w, aw = self.q, self.aq, self.w, self.aw
        s = loo_directions(self.r)
        h = q.mT @ aq
        qtw = q.mT @ w
        c = qtw - s * (s * qtw).sum(0)           # (I - s_i s_i^T) Q^T w_i
        ap = aw - aq @ c                          # A (I - Q_i Q_i^T) w_i
        d = q.mT @ ap
        e = d - s * (s * d).sum(0)
        hutch = (w * ap).sum(0) - (qtw * e).sum(0)
        return torch.trace(h) - (s * (h @ s)).sum(0) + hutch


def xtrace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """XTrace trace estimate (see the module docstring).

    Args:
        A: square operator (need not be symmetric).
        num_matvecs: even, ``>= 4`` (``s = num_matvecs / 2`` probes, two blocks).
        distribution: probe distribution (``"sphere"`` is the paper's improved choice).
        generator: private generator or seed.
        rtol: adaptive stopping: add ``num_matvecs / 2`` probes (``num_matvecs`` matvecs)
            at a time until ``std_error <= max(atol, rtol * |value|)``.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances (default: ``2 n``, where XTrace is exact).

    Returns:
        :class:`~backprobe.linalg.Estimate`.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs`` odd or ``< 4``, or more than ``2n``.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 4, "xtrace", multiple=2)
    check_distribution(distribution)
    if num_matvecs // 2 > op.shape[0]:
        raise ValueError(f"xtrace: num_matvecs/2 = {num_matvecs // 2} probes exceed the "
                         f"dimension {op.shape[0]}; compute the trace exactly instead")
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 2 * op.shape[0])
    est = XTrace(op, distribution, as_generator(generator))
    est.add(num_matvecs // 2)
    while True:
        value, err = est.estimate()
        if stop.done(value, err, est.spent, num_matvecs) or est.q.shape[1] + num_matvecs // 2 \
                > op.shape[0]:
            return Estimate(value, err, est.spent, "xtrace")
        est.add(num_matvecs // 2)
