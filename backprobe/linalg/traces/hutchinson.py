"""Hutchinson's trace estimator (Hutchinson 1989; Girard 1989).

    tr(A) ~ (1/m) sum_j z_j^T A z_j,     E[z z^T] = I

Unbiased because ``E[z^T A z] = tr(A E[z z^T]) = tr(A)``. Variance per probe:
``2 ||A||_F^2`` (Gaussian), ``2 (||A||_F^2 - sum_i A_ii^2)`` (Rademacher, symmetric ``A``);
the standard error reported is the sample standard deviation over ``sqrt(m)``.

Example:
    >>> a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> est = hutchinson_trace(a, 20, generator=0)
    >>> est.value  # 55 exactly: Rademacher probes are exact on a diagonal matrix
    55.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import LinearOperator, square_operator
from backprobe.linalg._probes import as_generator, check_distribution
from backprobe.linalg._results import Estimate, Stopping, check_matvecs
from backprobe.linalg.traces._running import RunningTrace


class HutchinsonTrace(RunningTrace):
    """Running Hutchinson estimate: samples ``z_j^T A z_j`` accumulated block by block."""

    def __init__(self, op: LinearOperator, distribution: str, generator: torch.Generator):
        super().__init__(op, distribution, generator)
        self.blocks: list[Tensor] = []

    def add_block(self, w: Tensor, aw: Tensor) -> None:
        """Add probes ``w [n, k]`` whose products ``A w`` are known (spent elsewhere)."""
        self.blocks.append((w * aw).sum(0))

    def samples(self) -> Tensor:
        """``z_j^T A z_j`` of every probe so far."""
        return torch.cat(self.blocks)


def hutchinson_trace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """Hutchinson trace estimate from ``num_matvecs`` probes (see the module docstring).

    Args:
        A: square operator (tensor, :class:`~backprobe.linalg.LinearOperator`, callable
            with ``shape``, scipy ``LinearOperator``).
        num_matvecs: probes in the first block (``>= 1``; the error needs ``>= 2``).
        distribution: ``"rademacher"``, ``"gaussian"``, ``"sphere"`` or ``"uniform"``.
        generator: private generator or seed (``None``: seeded from the global RNG).
        rtol: stop when ``std_error <= rtol * |value|`` ...
        atol: ... or ``std_error <= atol``; further blocks of ``num_matvecs`` probes are
            spent until then.
        max_matvecs: budget with ``rtol``/``atol`` (default ``100 * num_matvecs``).

    Returns:
        :class:`~backprobe.linalg.Estimate`.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs < 1``, bad distribution or tolerances.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 1, "hutchinson")
    check_distribution(distribution)
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 100 * num_matvecs)
    est = HutchinsonTrace(op, distribution, as_generator(generator))
    est.add(num_matvecs)
    while True:
        value, err = est.estimate()
        if stop.done(value, err, est.spent, num_matvecs):
            return Estimate(value, err, est.spent, "hutchinson")
        est.add(num_matvecs)
