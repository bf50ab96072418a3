"""Source wavelets."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ricker(
    freq: float, nt: int, dt: float, *, peak_time: float | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> Tensor:
    """Ricker (Mexican-hat) wavelet ``(1 - 2 a) exp(-a)``, ``a = (pi f (t - t0))^2``.

    Example:
        >>> ricker(10.0, 2000, 1e-3).shape
        torch.Size([2000])

    Args:
        freq: Peak frequency in Hz (> 0).
        nt: Number of samples (>= 1).
        dt: Sample interval in seconds (> 0).
        peak_time: Time of the peak in seconds; default ``1.5 / freq``.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        The wavelet sampled at ``t = n dt``, ``n = 0 .. nt - 1``, shape ``[nt]``.

    Raises:
        ValueError: If ``freq``, ``nt`` or ``dt`` is not positive.
    """
    if not (math.isfinite(freq) and freq > 0):
        raise ValueError(f"freq must be a positive frequency in Hz, got {freq}")
    if int(nt) != nt or nt < 1:
        raise ValueError(f"nt must be a positive integer, got {nt}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive time step in seconds, got {dt}")
    t0 = 1.5 / freq if peak_time is None else float(peak_time)
    t = torch.arange(int(nt), dtype=torch.float64, device=device) * dt - t0
    a = (math.pi * freq * t) ** 2
    return ((1 - 2 * a) * torch.exp(-a)).to(dtype)
