"""Hutchinson's diagonal estimator (Bekas, Kokiopoulou & Saad 2007).

    diag(A) ~ (1/m) sum_j z_j * (A z_j)      (entrywise product)

Unbiased for any ``E[z z^T] = I`` with independent entries: ``E[z_i (A z)_i] = A_ii``.
With Rademacher probes entry ``i`` has variance ``sum_{j != i} A_ij^2`` per probe (exact on
diagonal matrices). Standard errors are entrywise: sample std over ``sqrt(m)``.

Example:
    >>> a = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    >>> hutchinson_diag(a, 3, generator=0).value.tolist()
    [1.0, 2.0, 3.0, 4.0]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator, check_distribution, draw_block
from backprobe.linalg._results import DiagonalEstimate, Stopping, check_matvecs


def entrywise_mean_and_error(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error over the last axis of ``samples [n, m]``."""
    m = samples.shape[1]
    mean = samples.mean(1)
    err = samples.std(1) / math.sqrt(m) if m > 1 else torch.full_like(mean, math.nan)
    return mean, err


def diagonal_done(stop: Stopping, value: Tensor, err: Tensor, spent: int, block: int) -> bool:
    """The stopping rule on norms: ``||std_error|| <= max(atol, rtol ||value||)``."""
    return stop.done(float(torch.linalg.vector_norm(value)),
                     float(torch.linalg.vector_norm(err)), spent, block)


def hutchinson_diag(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> DiagonalEstimate:
    """Hutchinson diagonal estimate (see the module docstring).

    Args:
        A: square operator.
        num_matvecs: probes of the first block (``>= 1``).
        distribution: ``"rademacher"`` (recommended), ``"gaussian"``, ``"uniform"``.
        generator: private generator or seed.
        rtol: adaptive: further blocks until ``||std_error||_2 <= max(atol, rtol ||d||_2)``.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances (default ``100 * num_matvecs``).

    Returns:
        :class:`~backprobe.linalg.DiagonalEstimate`.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs < 1``, ``"sphere"`` probes (their
            entries are dependent).
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 1, "hutchinson diagonal")
    if check_distribution(distribution) == "sphere":
        raise ValueError("diagonal estimation needs independent entries: use 'rademacher'")
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 100 * num_matvecs)
    gen = as_generator(generator)
    samples, spent = [], 0
    while True:
        z = draw_block(op.shape[0], num_matvecs, distribution, gen, op.dtype, op.device)
        samples.append(z * op.matmat(z))
        spent += num_matvecs
        value, err = entrywise_mean_and_error(torch.cat(samples, 1))
        if diagonal_done(stop, value, err, spent, num_matvecs):
            return DiagonalEstimate(value, err, spent, "hutchinson")
