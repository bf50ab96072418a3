"""XNysTrace (Epperly, Tropp & Webber, SIMAX 2024): exchangeable Nystrom trace for PSD ``A``.

All ``m`` matvecs form one sketch ``Y = A W``. For each probe ``w_i`` the Nystrom
approximation built from the *other* probes, ``A_i = Y_{-i} (W_{-i}^T Y_{-i})^{-1} Y_{-i}^T``,
is independent of ``w_i``, so

    t_i = tr(A_i) + w_i^T (A - A_i) w_i

is unbiased; the estimate is ``mean_i t_i`` with standard error ``std_i(t_i) / sqrt(m)``.
With ``H = W^T Y``, ``M = H^{-1}`` and ``G = Y^T Y`` the Schur complement gives the closed form

    t_i = tr(M G) - (M G M)_ii / M_ii + 1 / M_ii,

computed stably from a Cholesky factor of ``H`` after a tiny shift ``A + nu I`` (the shift
is subtracted again: ``nu`` times ``n``). Unbiasedness does not need ``A`` to be PSD, but
``H`` must be positive definite: an indefinite sketch raises.

Example:
    >>> q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64,
    ...                        generator=torch.Generator().manual_seed(0)))
    >>> a = q @ torch.diag(torch.arange(1, 201.0, dtype=torch.float64) ** -2) @ q.T
    >>> est = xnystrace(a, 40, generator=0)
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


def shifted_cholesky(
    w: Tensor, y: Tensor, what: str, working: torch.dtype | None = None
) -> tuple[Tensor, Tensor, float]:
    """``(L, Y + nu W, nu)`` with ``L L^T = W^T (Y + nu W)``, ``nu`` grown until it factors.

    ``working`` is the dtype ``Y`` was computed in (sets the PSD check's tolerance).

    Raises:
        ValueError: ``W^T Y`` is not positive semi-definite (``A`` is not PSD).
    """
    eps = torch.finfo(y.dtype).eps
    tol_eps = torch.finfo(working or y.dtype).eps
    nu = eps * float(torch.linalg.matrix_norm(y)) / max(y.shape[0], 1) ** 0.5
    nu = max(nu, torch.finfo(y.dtype).tiny)
    h = w.mT @ y
    h = (h + h.mT) / 2
    scale = float(h.diagonal().abs().max())
    evals_min = float(torch.linalg.eigvalsh(h)[0]) if h.shape[0] else 0.0
    if evals_min < -100 * tol_eps * max(scale, 1e-300) * h.shape[0]:
        raise ValueError(f"{what} needs a PSD operator: the sketch W^T A W has the eigenvalue "
                         f"{evals_min:.3g} (largest diagonal {scale:.3g})")
    wtw = w.mT @ w
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(h + nu * wtw)
        if int(info) == 0:
            return chol, y + nu * w, nu
        nu *= 100
    raise ValueError(f"{what}: the sketch W^T A W is too ill-conditioned to factor")


class XNysTrace(RunningTrace):
    """Running XNysTrace state: probes ``W [n, m]`` and ``Y = A W``."""

    def __init__(self, op: LinearOperator, distribution: str, generator: torch.Generator):
        super().__init__(op, distribution, generator)
        n, dt, dev = op.shape[0], op.dtype, op.device
        self.w = torch.zeros(n, 0, dtype=dt, device=dev)
        self.y = self.w

    def add_block(self, w: Tensor, aw: Tensor) -> None:
        """Add probes with known products (spent elsewhere)."""
        self.w, self.y = torch.cat([self.w, w], 1), torch.cat([self.y, aw], 1)

    def samples(self) -> Tensor:
        """The ``m`` leave-one-out estimates ``t_i`` (float64)."""
        w, y = self.w.double(), self.y.double()
        chol, y_nu, nu = shifted_cholesky(w, y, "xnystrace", self.op.dtype)
        eye = torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
        k = torch.linalg.solve_triangular(chol, eye, upper=False)        # L^{-1}
        b = torch.linalg.solve_triangular(chol, y_nu.mT, upper=False).mT  # Y L^{-T}
        m_diag = (k * k).sum(0)                                            # diag(H^{-1})
        ym = b @ k                                                         # Y H^{-1}
        return (b * b).sum() - (ym * ym).sum(0) / m_diag + 1 / m_diag - nu * w.shape[0]


def xnystrace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """XNysTrace trace estimate of a PSD operator (see the module docstring).

    Args:
        A: square PSD operator.
        num_matvecs: ``>= 2`` probes, one block.
        distribution: probe distribution.
        generator: private generator or seed.
        rtol: adaptive stopping: further blocks of ``num_matvecs`` probes until
            ``std_error <= max(atol, rtol * |value|)``.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances (default ``n``).

    Returns:
        :class:`~backprobe.linalg.Estimate`.

    Raises:
        ValueError: non-square or non-PSD ``A``, ``num_matvecs < 2`` or ``> n``.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 2, "xnystrace")
    check_distribution(distribution)
    if num_matvecs > op.shape[0]:
        raise ValueError(f"xnystrace: num_matvecs={num_matvecs} exceeds the dimension "
                         f"{op.shape[0]}; compute the trace exactly instead")
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, op.shape[0])
    est = XNysTrace(op, distribution, as_generator(generator))
    est.add(num_matvecs)
    while True:
        value, err = est.estimate()
        if stop.done(value, err, est.spent, num_matvecs):
            return Estimate(value, err, est.spent, "xnystrace")
        est.add(num_matvecs)
