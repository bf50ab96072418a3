"""Built-in synthetic velocity models and smoothed starting models.

Every model is a function of relative coordinates in ``[0, 1]``, so any grid size gives the
same geology::

    v = layered((100, 200))            # [nz, nx] m/s, float32
    v3 = overthrust((40, 60, 80))      # [nz, ny, nx]
    v0 = smooth(v, sigma=8.0, fixed_rows=water_rows(v))   # FWI starting model

Axis convention (the propagator's): depth first, ``[nz, nx]`` or ``[nz, ny, nx]``, ``z`` grows
downwards; row 0 is the surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["MODELS", "layered", "overthrust", "smooth", "water_rows"]

V_WATER = 1500.0


def _grid(shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """Relative coordinates ``z, y, x`` in ``[0, 1]``, broadcast to ``shape`` (``y = 0`` in 2-D)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (nz, nx) or (nz, ny, nx), got {shape}")
    if any(s < 2 for s in shape):
        raise ValueError(f"shape must have at least 2 cells per axis, got {shape}")

    def axis(n: int) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, n, dtype=torch.float64)

    if len(shape) == 2:
        z = axis(shape[0])[:, None].expand(shape)
        x = axis(shape[1])[None, :].expand(shape)
        y = torch.zeros(shape, dtype=torch.float64)
    else:
        z = axis(shape[0])[:, None, None].expand(shape)
        y = axis(shape[1])[None, :, None].expand(shape)
        x = axis(shape[2])[None, None, :].expand(shape)
    return z, y, x


def _check_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")


def layered(shape: Sequence[int], *, water_depth: float = 0.1, fault: bool = True,
            body: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A layered model with a normal fault and a high-velocity body, under a water layer.

    Six gently dipping sedimentary layers (1800 to 3400 m/s) below the water (1500 m/s); a
    normal fault dipping at about 60 degrees drops the layers on its right by 8 % of the depth;
    an elliptical high-velocity body (4200 m/s, salt-like) sits in the lower left. In 3-D the
    layers also dip gently along ``y`` and the fault strikes obliquely.

    Args:
        shape: ``(nz, nx)`` or ``(nz, ny, nx)`` cells, at least 2 per axis.
        water_depth: water layer thickness as a fraction of the depth, in ``[0, 1)``.
        fault: include the fault.
        body: include the high-velocity body.
        dtype: floating-point dtype of the result.

    Returns:
        Velocity in m/s, shape ``shape``, values in ``[1500, 4200]``.

    Raises:
        ValueError: for a shape that is not 2-D/3-D or has an axis shorter than 2 cells, or a
            water depth outside ``[0, 1)``.
        TypeError: for a non-floating dtype.
    """
    _check_dtype(dtype)
    if not 0.0 <= water_depth < 1.0:
        raise ValueError(f"water_depth must be in [0, 1), got {water_depth}")
    z, y, x = _grid(shape, dtype)
    # Stratigraphic depth: layers dip by 5 % across x and 3 % across y.
    s = z - 0.05 * x - 0.03 * y
    if fault:
        # Normal fault: plane through (z=0.1, x=0.55), dipping to the right; hanging wall down.
        plane = 0.55 + 0.1 * y + (z - 0.1) / math.tan(math.radians(60.0))
        s = torch.where(x > plane, s - 0.08, s)
    tops = torch.linspace(water_depth, 1.0, 7, dtype=torch.float64)[:-1]
    velocities = torch.linspace(1800.0, 3400.0, 6, dtype=torch.float64)
    sed = z >= water_depth
    v = torch.where(sed, torch.full_like(z, float(velocities[0])), torch.full_like(z, V_WATER))
    for top, vel in zip(tops[1:], velocities[1:]):
        v = torch.where(sed & (s >= top), torch.full_like(v, float(vel)), v)
    if body:
        r2 = ((z - 0.68) / 0.12) ** 2 + ((x - 0.3) / 0.16) ** 2
        if len(shape) == 3:
            r2 = r2 + ((y - 0.5) / 0.35) ** 2
        v = torch.where(r2 <= 1.0, torch.full_like(v, 4200.0), v)
    return v.to(dtype).contiguous()


def overthrust(shape: Sequence[int], *, water_depth: float = 0.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An overthrust-like model: folded layers repeated by a thrust, over a fast basement.

    Ten layers (2300 to 5500 m/s) folded into an anticline; a thrust ramp dipping at about
    25 degrees to the left carries the hanging wall up by 15 % of the depth, so layers repeat
    above the ramp (the SEG/EAGE overthrust's signature); a 6000 m/s basement below 90 % depth
    and an optional water layer on top. In 3-D the fold axis plunges along ``y``.

    Args:
        shape: ``(nz, nx)`` or ``(nz, ny, nx)`` cells, at least 2 per axis.
        water_depth: water layer thickness as a fraction of the depth, in ``[0, 1)``.
        dtype: floating-point dtype of the result.

    Returns:
        Velocity in m/s, shape ``shape``, values in ``[1500, 6000]`` (``[2300, 6000]`` without
        water).

    Raises:
        ValueError: for a bad shape or water depth.
        TypeError: for a non-floating dtype.
    """
    _check_dtype(dtype)
    if not 0.0 <= water_depth < 1.0:
        raise ValueError(f"water_depth must be in [0, 1), got {water_depth}")
    z, y, x = _grid(shape, dtype)
    fold = 0.12 * torch.exp(-(((x - 0.6 + 0.1 * y) / 0.18) ** 2))
    s = z + fold
    ramp = 0.25 + (x - 0.3) * math.tan(math.radians(25.0))   # thrust plane z(x)
    above = (z < ramp) & (x > 0.2)
    s = torch.where(above, s + 0.15, s)
    velocities = torch.linspace(2300.0, 5500.0, 10, dtype=torch.float64)
    idx = torch.clamp((s * 10.0).floor().long(), 0, 9)
    v = velocities[idx]
    v = torch.where(z >= 0.9, torch.full_like(v, 6000.0), v)
    if water_depth > 0:
        v = torch.where(z < water_depth, torch.full_like(v, V_WATER), v)
    return v.to(dtype).contiguous()


def water_rows(v: torch.Tensor, *, v_water: float = V_WATER, tol: float = 1.0) -> int:
    """Number of top rows that are water everywhere (``|v - v_water| <= tol``).

    Args:
        v: velocity ``[nz, nx]`` or ``[nz, ny, nx]``.
        v_water: the water velocity in m/s.
        tol: tolerance in m/s.

    Returns:
        The count of leading depth rows that are entirely water.
    """
    if v.dim() not in (2, 3):
        raise ValueError(f"v must be [nz, nx] or [nz, ny, nx], got shape {tuple(v.shape)}")
    is_water = ((v - v_water).abs() <= tol).flatten(1).all(dim=1)
    if bool(is_water.all()):
        return int(v.shape[0])
    return int(torch.argmin(is_water.to(torch.int8)).item())


def _gaussian_kernel(sigma: float, dtype: torch.dtype) -> torch.Tensor:
    half = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-half, half + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth(v: torch.Tensor, sigma: float | Sequence[float], *, fixed_rows: int = 0) -> torch.Tensor:
    """Gaussian smoothing of a velocity model: the usual FWI starting model.

    Separable Gaussian filters along each axis, with the edges replicated (no darkening at
    the border). Rows ``< fixed_rows`` (e.g. a known water layer) are kept from ``v`` and
    are not smeared into the model below: they are replaced by the first free row before
    filtering.

    Args:
        v: velocity ``[nz, nx]`` or ``[nz, ny, nx]``.
        sigma: standard deviation in cells, one for all axes or one per axis; 0 leaves an axis
            unfiltered.
        fixed_rows: number of top rows kept unchanged.

    Returns:
        The smoothed model, same shape and dtype as ``v`` (no autograd graph kept).

    Raises:
        ValueError: for a bad shape, negative sigma, a sigma list of the wrong length, or
            ``fixed_rows`` outside ``[0, nz)``.
    """
    if v.dim() not in (2, 3):
        raise ValueError(f"v must be [nz, nx] or [nz, ny, nx], got shape {tuple(v.shape)}")
    sigmas = [float(sigma)] * v.dim() if isinstance(sigma, (int, float)) else [
        float(s) for s in sigma]
    if len(sigmas) != v.dim():
        raise ValueError(f"sigma must be a number or {v.dim()} numbers, got {sigma}")
    if any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    if not 0 <= fixed_rows < v.shape[0]:
        raise ValueError(f"fixed_rows must be in [0, {v.shape[0]}), got {fixed_rows}")
    dtype = v.dtype if v.dtype.is_floating_point else torch.get_default_dtype()
    out = v.detach().to(dtype).clone()
    if fixed_rows:
        out[:fixed_rows] = out[fixed_rows:fixed_rows + 1]
    for axis, s in enumerate(sigmas):
        if s == 0:
            continue
        k = _gaussian_kernel(s, dtype).to(out.device)
        moved = out.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        half = (k.numel() - 1) // 2
        flat = F.pad(flat, (half, half), mode="replicate")
        flat = F.conv1d(flat, k.view(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, axis)
    if fixed_rows:
        out[:fixed_rows] = v.detach()[:fixed_rows].to(dtype)
    return out.contiguous()


MODELS = {"layered": layered, "overthrust": overthrust}
"""Built-in models by name (the CLI's ``--model`` choices)."""
