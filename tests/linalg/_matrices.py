"""Small test matrices with known traces, diagonals and spectra (float64)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotation(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g)).Q


def with_spectrum(lam: Tensor, seed: int = 0) -> Tensor:
    q = rotation(lam.numel(), seed)
    a = q @ torch.diag(lam.double()) @ q.T
    return (a + a.T) / 2


def decaying(n: int = 200, power: float = 2.0) -> Tensor:
    """PSD, ``lambda_i = i^-power``."""
    return with_spectrum(torch.arange(1, n + 1, dtype=torch.float64) ** -power)


def flat(n: int = 200) -> Tensor:
    """PSD, eigenvalues spread evenly in [1, 2]."""
    return with_spectrum(torch.linspace(1, 2, n, dtype=torch.float64))


def indefinite(n: int = 30) -> Tensor:
    return with_spectrum(torch.linspace(-1, 2, n, dtype=torch.float64), seed=1)


def nonsymmetric(n: int = 30) -> Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, n, dtype=torch.float64, generator=g) + 3 * torch.eye(n)


def low_rank_psd(n: int = 40, rank: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, rank, dtype=torch.float64, generator=g)
    return x @ x.T
