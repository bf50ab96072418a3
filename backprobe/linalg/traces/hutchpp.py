"""Hutch++ and NA-Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021).

Hutch++ with ``m`` matvecs: a sketch ``Q = orth(A S)`` from ``m/3`` probes, its exact part
``tr(Q^T A Q)``, and Hutchinson with ``m/3`` probes ``G`` on the deflated remainder,

    tr(A) ~ tr(Q^T A Q) + (3/m) tr(G^T (I - QQ^T) A (I - QQ^T) G).

Unbiased (``G`` is independent of ``Q``, and ``tr(A) = tr(Q^T A Q) + tr((I-P) A (I-P))``);
relative error ``O(1/m)`` on PSD matrices instead of Hutchinson's ``O(1/sqrt(m))``. The
standard error is that of the Hutchinson part (the sketch part is exact given ``Q``).

NA-Hutch++ (non-adaptive: one block of matvecs) uses ``S`` (``m/4``), ``R`` (``m/2``) and
``G`` (``m/4``) probes with ``Z = A R``, ``W = A^T S``:

    tr(A) ~ tr((S^T Z)^+ W^T Z) + (4/m) [tr(G^T A G) - tr(G^T Z (S^T Z)^+ W^T G)].

Example:
    >>> q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64,
    ...                        generator=torch.Generator().manual_seed(0)))
    >>> a = q @ torch.diag(torch.arange(1, 51.0, dtype=torch.float64) ** -2) @ q.T
    >>> round(hutchpp_trace(a, 30, generator=1).value, 2), round(float(a.trace()), 2)
    (1.63, 1.63)
"""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator, check_distribution, draw_block
from backprobe.linalg._results import Estimate, Stopping, check_matvecs, mean_and_error


def hutchpp_trace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """Hutch++ trace estimate (see the module docstring).

    Args:
        A: square operator.
        num_matvecs: matvecs of the first pass, ``>= 3`` (split in thirds, remainder to
            the Hutchinson part).
        distribution: probe distribution (``"rademacher"``, ``"gaussian"``, ``"sphere"``).
        generator: private generator or seed.
        rtol: adaptive stopping: further Hutchinson probes (blocks of ``num_matvecs // 3``)
            on the deflated remainder until ``std_error <= max(atol, rtol * |value|)``.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances (default ``100 * num_matvecs``).

    Returns:
        :class:`~backprobe.linalg.Estimate`.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs < 3``.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 3, "hutchpp")
    check_distribution(distribution)
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, 100 * num_matvecs)
    gen = as_generator(generator)
    n = op.shape[0]
    k = num_matvecs // 3
    g_count = num_matvecs - 2 * k

    def draw(c: int) -> torch.Tensor:
        return draw_block(n, c, distribution, gen, op.dtype, op.device)

    q = torch.linalg.qr(op.matmat(draw(k))).Q
    g = draw(g_count)
    # one block for both: A Q (exact part) and A (I - QQ^T) G (Hutchinson part)
    pg = g - q @ (q.mT @ g)
    prod = op.matmat(torch.cat([q, pg], dim=1))
    spent = num_matvecs
    exact = float((q * prod[:, :k]).sum())
    samples = [(pg * prod[:, k:]).sum(0)]
    block = max(k, 1)
    while True:
        mean, err = mean_and_error(torch.cat(samples))
        if stop.done(exact + mean, err, spent, block):
            return Estimate(exact + mean, err, spent, "hutchpp")
        g = draw(block)
        pg = g - q @ (q.mT @ g)
        samples.append((pg * op.matmat(pg)).sum(0))
        spent += block


def na_hutchpp_trace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None,
) -> Estimate:
    """NA-Hutch++ trace estimate: all matvecs in one block (see the module docstring).

    Uses ``W = A^T S``: for a non-symmetric operator its ``m/4`` products go through the
    operator's adjoint.

    Args:
        A: square operator.
        num_matvecs: ``>= 4`` (``m/4`` for ``S``, ``m/2`` for ``R``, the rest for ``G``).
        distribution: probe distribution.
        generator: private generator or seed.

    Returns:
        :class:`~backprobe.linalg.Estimate` (standard error of the Hutchinson part).

    Raises:
        ValueError: non-square ``A``, ``num_matvecs < 4``.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 4, "na_hutchpp")
    check_distribution(distribution)
    gen = as_generator(generator)
    n = op.shape[0]
    c1 = num_matvecs // 4
    c2 = num_matvecs // 2
    c3 = num_matvecs - c1 - c2
    blocks = draw_block(n, c1 + c2 + c3, distribution, gen, op.dtype, op.device)
    s, r, g = blocks[:, :c1], blocks[:, c1:c1 + c2], blocks[:, c1 + c2:]
    spent = num_matvecs
    if op.symmetric:
        prod = op.matmat(torch.cat([r, g, s], dim=1))
        z, ag, w = prod[:, :c2], prod[:, c2:c2 + c3], prod[:, c2 + c3:]
    else:
        prod = op.matmat(torch.cat([r, g], dim=1))
        z, ag = prod[:, :c2], prod[:, c2:]
        w = op.rmatmat(s)
    core = torch.linalg.pinv(s.mT @ z)  # [c2, c1]
    exact = float(torch.trace(core @ (w.mT @ z)))
    correction = ((g.mT @ z) @ core * (g.mT @ w)).sum(1)  # g_j^T Z core W^T g_j
    samples = (g * ag).sum(0) - correction
    mean, err = mean_and_error(samples)
    return Estimate(exact + mean, err, spent, "na_hutchpp")
