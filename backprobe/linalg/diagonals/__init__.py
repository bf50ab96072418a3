"""Diagonal estimators, one method per file: ``diagonal(A, num_matvecs, method=...)``."""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._results import DiagonalEstimate
from backprobe.linalg.diagonals.hutchinson import hutchinson_diag
from backprobe.linalg.diagonals.xdiag import xdiag

DIAGONAL_METHODS = ("hutchinson", "xdiag")

__all__ = ["DIAGONAL_METHODS", "diagonal", "hutchinson_diag", "xdiag"]


def diagonal(
    A: Any, num_matvecs: int, *, method: str = "hutchinson", distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> DiagonalEstimate:
    """Estimate ``diag(A)`` from matrix-vector products.

    ``"hutchinson"``: mean of ``z * (A z)`` (unbiased; best when ``A`` is close to diagonal
    or its spectrum is flat). ``"xdiag"``: leave-one-out deflation (unbiased; far better on
    decaying spectra; needs ``A^T`` products, free for symmetric operators). Both return
    entrywise standard errors.

    Args:
        A: square operator.
        num_matvecs: matvecs of the first block(s) (``xdiag``: even, ``>= 4``).
        method: one of :data:`DIAGONAL_METHODS`.
        distribution: probe distribution (``xdiag``: Rademacher only).
        generator: private generator or int seed.
        rtol: adaptive stopping on ``||std_error||_2 <= max(atol, rtol ||d||_2)``.
        atol: see ``rtol``.
        max_matvecs: adaptive budget.

    Returns:
        :class:`~backprobe.linalg.DiagonalEstimate`.

    Raises:
        ValueError: unknown method, non-square ``A``, ``num_matvecs`` too small.

    Example:
        >>> a = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
        >>> diagonal(a, 8, generator=0).value.tolist()  # Rademacher: exact on a diagonal
        [1.0, 2.0, 3.0, 4.0]
    """
    kw: dict[str, Any] = {"distribution": distribution, "generator": generator, "rtol": rtol,
                          "atol": atol, "max_matvecs": max_matvecs}
    if method == "hutchinson":
        return hutchinson_diag(A, num_matvecs, **kw)
    if method == "xdiag":
        return xdiag(A, num_matvecs, **kw)
    raise ValueError(f"method must be one of {DIAGONAL_METHODS}, got {method!r}")
