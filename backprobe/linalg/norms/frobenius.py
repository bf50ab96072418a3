"""Squared Frobenius norm by Hutchinson's estimator on ``A^T A`` (Hutchinson 1989).

    ||A||_F^2 = tr(A^T A) ~ (1/m) sum_j ||A z_j||^2,     E[z z^T] = I

Unbiased; needs only products with ``A`` (``A`` may be rectangular). Standard error: sample
std over ``sqrt(m)``.

Example:
    >>> a = torch.eye(10, dtype=torch.float64)
    >>> frobenius_norm_squared(a, 5, generator=0).value
    10.0
"""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._operator import as_operator
from backprobe.linalg._probes import as_generator, check_distribution, draw_block
from backprobe.linalg._results import Estimate, Stopping, check_matvecs, mean_and_error


def frobenius_norm_squared(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """Estimate ``||A||_F^2`` (see the module docstring).

    Args:
        A: operator ``[n, m]``.
        num_matvecs: probes of the first block (``>= 1``).
        distribution: probe distribution.
        generator: private generator or seed.
        rtol: adaptive stopping, as :func:`~backprobe.linalg.trace`.
        atol: see ``rtol``.
        max_matvecs: adaptive budget (default ``100 * num_matvecs``).

    Returns:
        :class:`~backprobe.linalg.Estimate`.

    Raises:
        ValueError: ``num_matvecs < 1``, bad distribution or tolerances.
    """
    op = as_operator(A)
    check_matvecs(num_matvecs, 1, "frobenius_norm_squared")
    check_distribution(distribution)
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 100 * num_matvecs)
    gen = as_generator(generator)
    samples, spent = [], 0
    while True:
        z = draw_block(op.shape[1], num_matvecs, distribution, gen, op.dtype, op.device)
        samples.append((op.matmat(z) ** 2).sum(0))
        spent += num_matvecs
        value, err = mean_and_error(torch.cat(samples))
        if stop.done(value, err, spent, num_matvecs):
            return Estimate(value, err, spent, "hutchinson")
