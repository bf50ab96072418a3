"""A slow, plain-autograd reference of :func:`backprobe.wave.model` (tests' oracle).

Same discretisation, written as an out-of-place torch loop so that autograd (reverse or
forward mode, ``torch.func``) differentiates it. Use small grids only: autograd keeps
every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backprobe.wave._cpml import FIRST, cpml_profiles
from backprobe.wave._propagator import COEFFICIENTS, damping_profile, dominant_frequency
from backprobe.wave.modelling import _corners


def model_reference(
    v: Tensor, dx: float, dt: float, wavelet: Tensor, src_pos: Any, rec_pos: Any, *,
    space_order: int = 8, pml_width: int = 20, boundary: str = "cpml",
    pml_freq: float | None = None, max_vel: float | None = None,
) -> Tensor:
    """Receiver data ``[shots, n_rec, nt]`` as :func:`~backprobe.wave.model` computes them.

    Args:
        v: Velocity ``[nz, nx]`` or ``[nz, ny, nx]``.
        dx: Grid spacing (m).
        dt: Time step (s); no substeps (CFL is not checked).
        wavelet: ``[nt]`` or ``[shots, nt]``.
        src_pos: ``[shots, ndim]`` grid-index positions.
        rec_pos: ``[n_rec, ndim]`` or ``[shots, n_rec, ndim]``.
        space_order: 2, 4, 6 or 8.
        pml_width: Absorbing-layer width in cells.
        boundary: ``"cpml"`` (default, as in :func:`backprobe.wave.model`) or ``"damping"``.
        pml_freq: CPML frequency (default: the wavelet's spectral peak).
        max_vel: Velocity setting the layer's strength (default ``v.max()``).

    Returns:
        Receiver data ``[shots, n_rec, nt]``, differentiable by autograd.
    """
    ndim = v.dim()
    interior = tuple(v.shape)
    src = torch.as_tensor(src_pos, dtype=torch.float64)
    rec = torch.as_tensor(rec_pos, dtype=torch.float64)
    shots = src.shape[0]
    if rec.dim() == 2:
        rec = rec.unsqueeze(0).expand(shots, -1, -1)
    if wavelet.dim() == 1:
        wavelet = wavelet.unsqueeze(0).expand(shots, -1)
    nt = wavelet.shape[1]
    pml = pml_width
    vd = F.pad(v[None, None], (pml,) * (2 * ndim), mode="replicate")[0, 0] if pml else v
    dom = tuple(vd.shape)
    vmax = float(v.detach().max()) if max_vel is None else max_vel
    cpml = boundary == "cpml"
    sigma = damping_profile(dom, pml, dx, vmax).to(v) * (0.0 if cpml else 1.0)
    c = 1 / (1 + sigma * dt / 2)
    if cpml:
        freq = pml_freq if pml_freq is not None else dominant_frequency(wavelet, dt)
        prof = [cpml_profiles(n, pml, dx, dt, vmax, freq) for n in dom]
        shapes = [[-1 if b == a else 1 for b in range(ndim)] for a in range(ndim)]
        ca = [prof[a][0].to(v).view(shapes[a]) for a in range(ndim)]
        cb = [prof[a][1].to(v).view(shapes[a]) for a in range(ndim)]
        d1 = FIRST[space_order]
    coeff = COEFFICIENTS[space_order]
    h = space_order // 2
    si, sw = _corners(src, interior, pml, "src_pos")
    ri, rw = _corners(rec, interior, pml, "rec_pos")
    sw, rw = sw.to(v), rw.to(v)
    ncell = math.prod(dom)
    # Dense injection/recording matrices: [S, ncell] and [S, R, ncell].
    inj = torch.zeros(shots, ncell, dtype=v.dtype).scatter_add(1, si, sw)
    rec_m = torch.zeros(shots, ri.shape[1], ncell, dtype=v.dtype).scatter_add(2, ri, rw)

    def along(p: Tensor, a: int) -> Tensor:
        """``p`` zero-padded by ``h`` along axis ``a`` only."""
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - a)] = pad[2 * (ndim - 1 - a) + 1] = h
        return F.pad(p, pad)

    def deriv1(p: Tensor, a: int) -> Tensor:
        pp = along(p, a)
        out = torch.zeros_like(p)
        for k in range(1, h + 1):
            out = out + d1[k - 1] * (pp.narrow(a + 1, h + k, dom[a])
                                     - pp.narrow(a + 1, h - k, dom[a]))
        return out / dx

    def deriv2(p: Tensor, a: int) -> Tensor:
        pp = along(p, a)
        return (coeff[0] * p + sum(coeff[k] * (pp.narrow(a + 1, h + k, dom[a])
                                               + pp.narrow(a + 1, h - k, dom[a]))
                                   for k in range(1, h + 1))) / dx**2

    psi = [torch.zeros((shots, *dom), dtype=v.dtype) for _ in range(ndim)]
    zeta = [torch.zeros((shots, *dom), dtype=v.dtype) for _ in range(ndim)]

    def lap_cpml(p: Tensor) -> Tensor:
        out = torch.zeros_like(p)
        for a in range(ndim):
            psi[a] = ca[a] * psi[a] + cb[a] * deriv1(p, a)
            w = deriv2(p, a) + deriv1(psi[a], a)
            zeta[a] = ca[a] * zeta[a] + cb[a] * w
            out = out + w + zeta[a]
        return out

    def lap(p: Tensor) -> Tensor:
        pp = F.pad(p, (h,) * (2 * ndim))
        out = ndim * coeff[0] * p
        for a in range(ndim):
            core = pp
            for b in range(ndim):
                if b != a:
                    core = core.narrow(b + 1, h, dom[b])
            for k in range(1, h + 1):
                out = out + coeff[k] * (core.narrow(a + 1, h + k, dom[a])
                                        + core.narrow(a + 1, h - k, dom[a]))
        return out / dx**2

    p_prev = torch.zeros((shots, *dom), dtype=v.dtype)
    p = torch.zeros((shots, *dom), dtype=v.dtype)
    out = []
    for n in range(nt):
        src_term = (inj * wavelet[:, n:n + 1]).view(shots, *dom) * dt**2
        lp = lap_cpml(p) if cpml else lap(p)
        p_next = c * (2 * p - (1 - sigma * dt / 2) * p_prev + vd**2 * dt**2 * lp + src_term)
        out.append(torch.einsum("srx,sx->sr", rec_m, p_next.reshape(shots, -1)))
        p_prev, p = p, p_next
    return torch.stack(out, -1)
