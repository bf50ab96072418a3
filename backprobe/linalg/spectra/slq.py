"""Spectral density by stochastic Lanczos quadrature.

Golub & Meurant 2010; Ubaru, Chen & Saad 2017; as PyHessian (Yao et al. 2020) computes
Hessian spectra.

For a unit probe ``v``, ``m`` Lanczos steps give ``T = Y diag(theta) Y^T``; the Gauss
quadrature ``sum_j tau_j delta(lambda - theta_j)`` with ``tau_j = Y[0, j]^2`` matches the
spectral measure ``mu_v = sum_i (u_i^T v)^2 delta(lambda - lambda_i)`` on polynomials of
degree ``< 2m``. Averaging over probes with ``E[v v^T] = I / n`` estimates the eigenvalue
density ``(1/n) sum_i delta(lambda - lambda_i)``; a Gaussian of width ``sigma`` smooths it
for plotting. The ``p`` probes run as one block (one call of ``p`` matvecs per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator, check_distribution, draw_block
from backprobe.linalg._results import Estimate, mean_and_error
from backprobe.linalg.spectra.lanczos import lanczos, tridiagonal


@dataclass(frozen=True)
class SpectralDensity:
    """Quadrature nodes and weights of stochastic Lanczos quadrature.

    Attributes:
        nodes: ``[p, m]`` Ritz values per probe.
        weights: ``[p, m]`` quadrature weights (each row sums to 1).
        dim: dimension ``n`` of the operator.
        num_matvecs: ``p * m``.
    """

    nodes: Tensor
    weights: Tensor
    dim: int
    num_matvecs: int

    def density(self, grid: Tensor, sigma: float | None = None) -> Tensor:
        """The Gaussian-smoothed density on ``grid [g]`` (integrates to ~1).

        Args:
            grid: points to evaluate at.
            sigma: smoothing width (default: 1% of the nodes' range, at least ``1e-12``).

        Returns:
            ``[g]`` density values.
        """
        nodes, w = self.nodes.double().flatten(), self.weights.double().flatten()
        if sigma is None:
            sigma = max(0.01 * float(nodes.max() - nodes.min()), 1e-12)
        z = (grid.double()[:, None] - nodes[None, :]) / sigma
        k = torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
        return (k * w).sum(1) / self.nodes.shape[0]

    def trace(self) -> Estimate:
        """``tr(A) ~ n * mean_v sum_j tau_j theta_j`` (Hutchinson with unit-norm probes)."""
        per_probe = self.dim * (self.nodes.double() * self.weights.double()).sum(1)
        value, err = mean_and_error(per_probe)
        return Estimate(value, err, self.num_matvecs, "slq")


def spectral_density(
    A: Any, num_probes: int = 8, num_steps: int = 40, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of a symmetric operator's spectrum.

    Args:
        A: square symmetric operator.
        num_probes: independent probes ``p``.
        num_steps: Lanczos steps ``m`` per probe (``<= n``).
        distribution: probe distribution.
        generator: private generator or seed.

    Returns:
        :class:`SpectralDensity`.

    Raises:
        ValueError: non-square ``A``, ``num_probes < 1``, ``num_steps`` out of ``[1, n]``.

    Example:
        >>> a = torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64))
        >>> sd = spectral_density(a, 4, 2, generator=0)
        >>> round(sd.trace().value, 6)
        8.0
    """
    op = square_operator(A)
    n = op.shape[0]
    check_distribution(distribution)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if not 1 <= num_steps <= n:
        raise ValueError(f"num_steps must be in [1, {n}], got {num_steps}")
    v0 = draw_block(n, num_probes, distribution, as_generator(generator), op.dtype, op.device)
    alpha, beta, _ = lanczos(op, v0, num_steps)
    theta, y = torch.linalg.eigh(tridiagonal(alpha, beta).double())
    return SpectralDensity(theta, y[:, 0, :] ** 2, n, num_probes * num_steps)
