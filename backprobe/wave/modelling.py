"""Differentiable acoustic modelling: ``model(v, dx, dt, wavelet, src_pos, rec_pos)``."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from backprobe.wave._propagator import COEFFICIENTS, Propagator, cfl_dt
from backprobe.wave.exact import Exact
from backprobe.wave.imaging import Imaging, ImagingPass, ModellingInfo

logger = logging.getLogger(__name__)


def _positions(pos: Any, name: str, shots: int | None, ndim: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(pos, dtype=torch.float64, device=like.device)
    if t.dim() == 0 or t.shape[-1] != ndim:
        raise ValueError(f"{name} must end with a dimension of size {ndim} (grid-index "
                         f"coordinates of a {ndim}-D model), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def _corners(pos: Tensor, interior: tuple[int, ...], pml: int, name: str) -> tuple[Tensor, Tensor]:
    """(Bi/tri)linear interpolation corners of ``pos [..., ndim]``: flat ``D`` indices, weights."""
    ndim = len(interior)
    hi = torch.tensor([n - 1 for n in interior], dtype=pos.dtype, device=pos.device)
    bad = (pos < 0) | (pos > hi)
    if bad.any():
        raise ValueError(
            f"{name} must lie inside the model grid: each coordinate in [0, n - 1] for "
            f"the interior shape {interior} (absorbing layer excluded); got "
            f"{pos[bad.any(-1)][0].tolist()}")
    dom = [n + 2 * pml for n in interior]
    idx_axes, w_axes = [], []
    for a, n in enumerate(interior):
        p = pos[..., a]
        i0 = torch.clamp(torch.floor(p), 0, max(n - 2, 0))
        f = p - i0
        i1 = torch.clamp(i0 + 1, max=n - 1)
        idx_axes.append((i0.long() + pml, i1.long() + pml))
        w_axes.append((1 - f, f))
    idx = torch.zeros((*pos.shape[:-1], 1), dtype=torch.long, device=pos.device)
    w = torch.ones((*pos.shape[:-1], 1), dtype=pos.dtype, device=pos.device)
    for a in range(ndim):
        stride = math.prod(dom[a + 1:])
        i0, i1 = idx_axes[a]
        w0, w1 = w_axes[a]
        idx = torch.cat([idx + (i0 * stride)[..., None], idx + (i1 * stride)[..., None]], -1)
        w = torch.cat([w * w0[..., None], w * w1[..., None]], -1)
    return idx, w


class _Modelling(torch.autograd.Function):
    """Forward under no_grad; backward by the exact discrete adjoint and the strategy."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, v_dom: Tensor, wavelet: Tensor, geom: dict[str, Any], imaging: Imaging,
        info: ModellingInfo, observed: Tensor | None,
    ) -> Tensor:
        prop = Propagator(v_dom.detach(), wavelet=wavelet.detach(), **geom)
        keep = bool(ctx.needs_input_grad[0])
        p: ImagingPass = imaging.start(prop, info, observed, keep)
        data = p.forward(prop)
        imaging._nbytes = p.nbytes()
        ctx.prop, ctx.pass_ = prop, p
        ctx.save_for_backward(v_dom)
        return data

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_data: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (v_dom,) = ctx.saved_tensors
        prop: Propagator = ctx.prop
        p: ImagingPass = ctx.pass_
        want_v, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad, grad_w = p.backward(prop, grad_data.contiguous(), want_v, want_w)
        p.release()
        ctx.prop = ctx.pass_ = None
        grad_v = None
        if want_v and grad is not None:
            grad_v = grad.mul_(v_dom).mul_(2 * prop.dt**2)
        return grad_v, grad_w, None, None, None, None


def model(
    v: Tensor, dx: float, dt: float, wavelet: Tensor, src_pos: Any, rec_pos: Any, *,
    imaging: Imaging | None = None, space_order: int = 8, pml_width: int = 20,
    substeps: int | str | None = "auto", observed: Tensor | None = None,
    boundary: str = "cpml", pml_freq: float | None = None, max_vel: float | None = None,
) -> Tensor:
    """Model receiver data with the constant-density acoustic wave equation.

    Solves ``u_tt = v^2 lap(u) + s`` by second-order leapfrog in time and a centred
    ``space_order`` Laplacian, with an absorbing layer of ``pml_width`` cells on every
    side (a damping layer, or a convolutional PML; the velocity is extended into it by
    its edge values). Differentiable with
    respect to ``v`` and ``wavelet``; backward runs the exact discrete adjoint and forms
    the velocity gradient with ``imaging``.

    Example:
        >>> v = torch.full((60, 80), 2000.0)
        >>> w = ricker(10.0, 500, 1e-3)
        >>> d = model(v, 10.0, 1e-3, w, [[2.0, 40.0]], [[2.0, float(x)] for x in range(80)])
        >>> d.shape
        torch.Size([1, 80, 500])

    Args:
        v: Velocity (m/s), ``[nz, nx]`` or ``[nz, ny, nx]``, positive and finite.
        dx: Grid spacing (m), the same on every axis.
        dt: Recording sample interval (s).
        wavelet: Source time function ``[nt]`` shared by all shots, or ``[shots, nt]``.
        src_pos: Source positions ``[shots, ndim]`` in (fractional) grid indices of the
            interior grid (``(z, x)`` or ``(z, y, x)``); off-grid positions are injected
            by (bi/tri)linear interpolation.
        rec_pos: Receiver positions ``[n_rec, ndim]`` shared by all shots, or
            ``[shots, n_rec, ndim]``; read by the same interpolation.
        imaging: The imaging strategy (default :class:`Exact`).
        space_order: Spatial accuracy order: 2, 4, 6 or 8.
        pml_width: Absorbing-layer width in cells (``>= 0``).
        substeps: ``"auto"``: when ``dt`` violates the CFL limit, use the smallest integer
            number of internal steps per sample that satisfies it (with a warning; see
            ``imaging.last_info``). An integer fixes it; ``None`` means 1.
        observed: Observed data ``[shots, n_rec, nt]``; required by data-informed probes.
        boundary: ``"cpml"`` (the default: a convolutional PML, Pasalic & McGarry 2010,
            its memory variables on the layer strips only) or ``"damping"`` (a quadratic
            damping layer: about half the time on CPU but far more reflective at the same
            width, e.g. 13% against 0.1% of the data for 20 cells at 10 Hz).
        pml_freq: The CPML's frequency (Hz) for its ``alpha`` profile; default: the peak
            of the wavelet's amplitude spectrum.
        max_vel: Velocity that sets the absorbing layer's strength (default ``v.max()``).
            The layer is treated as fixed when differentiating, so with the default the
            gradient ignores how ``v.max()`` moves the layer; pass a number to make the
            modelled data exactly the function whose gradient is returned.

    Returns:
        Receiver data ``[shots, n_rec, nt]``: sample ``i`` is the pressure at ``(i + 1) dt``.

    Raises:
        ValueError: On a non-positive or non-finite velocity, positions outside the grid,
            mismatched shapes, a ``dt`` violating the CFL limit with substeps disabled, or
            observed data of the wrong shape.
        TypeError: If ``v`` is not a floating-point tensor or ``imaging`` not an
            :class:`Imaging`.
    """
    imaging = Exact() if imaging is None else imaging
    if not isinstance(imaging, Imaging):
        raise TypeError(f"imaging must be an Imaging strategy, got {type(imaging).__name__}")
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise TypeError("v must be a floating-point torch.Tensor of velocities (m/s)")
    if v.dim() not in (2, 3):
        raise ValueError(f"v must be [nz, nx] or [nz, ny, nx], got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise ValueError("v must not be empty")
    with torch.no_grad():
        vmin, vmax = float(v.min()), float(v.max())
        finite = bool(torch.isfinite(v).all())
    if not finite or not vmin > 0:
        raise ValueError("v must be positive and finite everywhere (m/s); "
                         f"got min {vmin}, max {vmax}")
    if not (isinstance(dx, (int, float)) and math.isfinite(dx) and dx > 0):
        raise ValueError(f"dx must be a positive grid spacing in metres, got {dx!r}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive time step in seconds, got {dt!r}")
    if space_order not in COEFFICIENTS:
        raise ValueError(f"space_order must be one of {sorted(COEFFICIENTS)}, got {space_order}")
    if isinstance(pml_width, bool) or not isinstance(pml_width, int) or pml_width < 0:
        raise ValueError(f"pml_width must be a non-negative integer, got {pml_width!r}")
    if boundary not in ("damping", "cpml"):
        raise ValueError(f"boundary must be 'damping' or 'cpml', got {boundary!r}")
    if max_vel is not None and not (math.isfinite(max_vel) and max_vel > 0):
        raise ValueError(f"max_vel must be a positive velocity in m/s, got {max_vel!r}")
    if pml_freq is not None and not (math.isfinite(pml_freq) and pml_freq > 0):
        raise ValueError(f"pml_freq must be a positive frequency in Hz, got {pml_freq!r}")
    ndim = v.dim()
    interior = tuple(v.shape)
    src = _positions(src_pos, "src_pos", None, ndim, v)
    if src.dim() != 2:
        raise ValueError(f"src_pos must be [shots, {ndim}], got shape {tuple(src.shape)}")
    shots = src.shape[0]
    if shots < 1:
        raise ValueError("src_pos must hold at least one shot")
    rec = _positions(rec_pos, "rec_pos", shots, ndim, v)
    if rec.dim() == 2:
        rec = rec.unsqueeze(0).expand(shots, -1, -1)
    elif rec.dim() != 3 or rec.shape[0] != shots:
        raise ValueError(f"rec_pos must be [n_rec, {ndim}] or [shots={shots}, n_rec, {ndim}], "
                         f"got shape {tuple(rec.shape)}")
    if rec.shape[1] < 1:
        raise ValueError("rec_pos must hold at least one receiver")
    if not isinstance(wavelet, Tensor) or not wavelet.is_floating_point():
        raise TypeError("wavelet must be a floating-point torch.Tensor")
    if wavelet.dim() == 1:
        wavelet = wavelet.unsqueeze(0).expand(shots, -1)
    elif wavelet.dim() != 2 or wavelet.shape[0] != shots:
        raise ValueError(f"wavelet must be [nt] or [shots={shots}, nt], "
                         f"got shape {tuple(wavelet.shape)}")
    nt = wavelet.shape[1]
    if nt < 1:
        raise ValueError("wavelet must have at least one time sample")
    if not bool(torch.isfinite(wavelet.detach()).all()):
        raise ValueError("wavelet must be finite")
    n_rec = rec.shape[1]
    if observed is not None:
        if not isinstance(observed, Tensor) or tuple(observed.shape) != (shots, n_rec, nt):
            got = tuple(observed.shape) if isinstance(observed, Tensor) else type(observed)
            raise ValueError(f"observed must be a tensor of shape [shots, n_rec, nt] = "
                             f"{(shots, n_rec, nt)}, got {got}")
    imaging.validate(observed, shots, n_rec, nt)

    limit = cfl_dt(space_order, ndim, float(dx), vmax)
    if substeps == "auto":
        ns = max(1, math.ceil(dt / limit - 1e-9))
        if ns > 1:
            msg = (f"dt={dt} exceeds the CFL limit {limit:.4g} s for space_order="
                   f"{space_order} and vmax={vmax:.4g}: using {ns} internal substeps")
            warnings.warn(msg, stacklevel=2)
            logger.info(msg)
    else:
        fixed = 1 if substeps is None else substeps
        if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1:
            raise ValueError(
                f"substeps must be 'auto', None or a positive integer, got {substeps!r}")
        ns = fixed
        if dt / ns > limit * (1 + 1e-9):
            raise ValueError(
                f"dt={dt} (with substeps={ns}) violates the CFL limit dt <= {limit:.6g} s "
                f"for space_order={space_order}, dx={dx} and vmax={vmax:.6g}; use a smaller "
                "dt or substeps='auto'")
    dt_int = dt / ns

    dtype = v.dtype
    wavelet = wavelet.to(dtype)
    if ns > 1:  # linear interpolation onto the internal time grid
        nxt = torch.cat([wavelet[:, 1:], torch.zeros_like(wavelet[:, :1])], 1)
        w = torch.arange(ns, dtype=dtype, device=v.device) / ns
        wavelet = (wavelet[..., None] * (1 - w) + nxt[..., None] * w).reshape(shots, -1)
    src_idx, src_w = _corners(src, interior, pml_width, "src_pos")
    rec_idx, rec_w = _corners(rec, interior, pml_width, "rec_pos")
    if pml_width:
        v_dom = F.pad(v[None, None], (pml_width,) * (2 * ndim), mode="replicate")[0, 0]
    else:
        v_dom = v
    layer_v = vmax if max_vel is None else float(max_vel)
    geom = dict(dx=float(dx), dt=dt_int, order=space_order, pml=pml_width, vmax=layer_v,
                src_index=src_idx, src_weight=src_w.to(dtype), rec_index=rec_idx,
                rec_weight=rec_w.to(dtype), boundary=boundary, pml_freq=pml_freq)
    info = ModellingInfo(substeps=ns, dt_internal=dt_int, n_steps=nt * ns,
                         domain_shape=tuple(v_dom.shape), shots=shots)
    imaging.last_info = info
    obs = observed.detach().to(dtype) if observed is not None else None
    data = _Modelling.apply(v_dom, wavelet, geom, imaging, info, obs)
    if ns > 1:
        data = data[..., ns - 1::ns]
    return data
