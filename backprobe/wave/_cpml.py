"""Convolutional PML for the second-order scalar wave equation, with its exact adjoint.

Per axis ``a`` (Pasalic & McGarry 2010, the form Deepwave uses), with ``D1``/``D2`` the
centred first/second differences along ``a`` and memory variables ``psi_a``, ``zeta_a``:

    psi_a^n  = A_a psi_a^{n-1} + B_a D1 u_n
    w_a      = D2 u_n + D1 psi_a^n
    zeta_a^n = A_a zeta_a^{n-1} + B_a w_a
    L_pml u_n = sum_a (w_a + zeta_a^n)

with ``A = exp(-(sigma + alpha) dt)``, ``B = sigma / (sigma + alpha) (A - 1)`` inside the
layer of axis ``a`` and ``A = B = 0`` outside it, so ``psi_a`` and ``zeta_a`` vanish
outside the layer and ``D1 psi_a`` outside the layer widened by the stencil half-width
``h``. Hence ``L_pml u = L u + sum_a E_a``: the plain Laplacian ``L`` over the whole domain
plus corrections ``E_a = D1 psi_a + zeta_a`` that live only in the two *strips* of axis
``a`` (its layer, widened by ``h`` cells). Memory variables, their updates and those of
the adjoint are computed and stored on the strips only, both strips of an axis in one
strided view (one tensor operation per term for both sides).

``D1`` is antisymmetric and ``D2`` symmetric (fields vanish outside the domain), which
gives the adjoint. With ``lbar`` the adjoint of ``L_pml u_n`` and ``mu``/``nu`` those of
``psi``/``zeta``, one reversed step reads

    nu += lbar;  tw = lbar + B nu;  mu += D1^T tw;
    u_bar += L lbar + sum_a [D2 (B nu) + D1^T (B mu)];  nu *= A;  mu *= A.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Centred first-derivative coefficients ``(d_1, ..., d_h)`` by accuracy order.
FIRST: dict[int, tuple[float, ...]] = {
    2: (1 / 2,),
    4: (2 / 3, -1 / 12),
    6: (3 / 4, -3 / 20, 1 / 60),
    8: (4 / 5, -1 / 5, 4 / 105, -1 / 280),
}


def cpml_profiles(
    n: int, pml: int, dx: float, dt: float, vmax: float, freq: float,
    reflection: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """1-D ``(A, B)`` profiles (float64) for an axis of ``n`` domain cells.

    ``sigma = d0 (d / W)^2`` with ``d0 = 3 vmax ln(1 / R) / (2 W dx)`` (Collino & Tsogka
    2001), ``alpha = pi f (1 - d / W)``, ``d`` the depth into the ``W = pml``-cell layer.
    """
    i = torch.arange(n, dtype=torch.float64)
    d = torch.clamp(torch.maximum(pml - i, i - (n - 1 - pml)), min=0) / max(pml, 1)
    sigma = 3.0 * vmax * math.log(1.0 / reflection) / (2.0 * max(pml, 1) * dx) * d**2
    alpha = math.pi * freq * (1 - d)
    a = torch.exp(-(sigma + alpha) * dt)
    inside = sigma > 0
    b = torch.where(inside, sigma / (sigma + alpha) * (a - 1), torch.zeros_like(a))
    return torch.where(inside, a, torch.zeros_like(a)), b


def layers(n: int, pml: int, halo: int) -> tuple[list[int], int]:
    """Layer starts and width along an axis of ``n`` cells.

    Two layers of ``pml`` cells (low and high side), or one covering the axis when their
    strips (``pml + 2 halo`` cells) would overlap; none without a layer.
    """
    if pml == 0:
        return [], 0
    if 2 * (pml + halo) > n:
        return [0], n
    return [0, n - pml], pml


Pairs = list[tuple[Tensor, Tensor]]


def _cut(t: Tensor, dim: int, start: int, length: int, dom: tuple[int, ...], pad: int) -> Tensor:
    """``t`` (``[S, *spatial]``) narrowed along ``dim``, and to its interior on the others.

    Along spatial axis ``dim``: cells ``[start, start + length)``; along the others
    ``[pad, pad + n)`` (``pad = 0``: ``t`` is not padded there).
    """
    for b, n in enumerate(dom):
        if b == dim:
            t = t.narrow(b + 1, start, length)
        elif pad:
            t = t.narrow(b + 1, pad, n)
    return t


class _Axis:
    """The strips of one axis, both sides stacked: ``[S, sides, *strip]`` tensors.

    Along the axis, a side's layer has ``nl`` cells from ``l0``; its strip (where ``D1 psi``
    lives) spans ``[l0 - h, l0 + nl + h)``; strip storage (``psi`` and the adjoint's
    scratch) ``[l0 - 2h, l0 + nl + 2h)``, zero outside the layer. The sides are ``gap``
    cells apart.
    """

    def __init__(self, cp: CPML, ax: int, starts: list[int], nl: int, a: Tensor,
                 b: Tensor) -> None:
        self.cp, self.ax, self.h = cp, ax, cp.h
        self.starts, self.nl, self.ns = starts, nl, nl + 2 * cp.h
        self.sides = len(starts)
        self.gap = starts[-1] - starts[0]
        n = cp.dom[ax]
        # In-domain part of each side's strip: (first cell in the domain, in the strip, count).
        self.parts = []
        for l0 in starts:
            d0, d1 = max(0, l0 - self.h), min(n, l0 + nl + self.h)
            self.parts.append((d0, d0 - (l0 - self.h), d1 - d0))
        shape = [1, self.sides] + [1] * cp.ndim
        shape[ax + 2] = nl
        self.a = torch.stack([a[l0:l0 + nl] for l0 in starts]).to(
            device=cp.device, dtype=cp.dtype).view(shape)
        self.b = torch.stack([b[l0:l0 + nl] for l0 in starts]).to(
            device=cp.device, dtype=cp.dtype).view(shape)
        self.psi_pad = self.field(nl + 4 * self.h)
        self.psi = self.sub(self.psi_pad, 2 * self.h, nl)
        self.zeta = self.field(nl)
        self.g, self.w, self.e = self.field(nl), self.field(nl), self.field(self.ns)
        self.e_layer = self.sub(self.e, self.h, nl)
        self.psi_pairs = self.pairs(self.psi_pad, self.h, self.ns)
        self._u: dict[int, tuple[Tensor, Pairs]] = {}

    def field(self, length: int) -> Tensor:
        """A zero ``[S, sides, ...]`` strip tensor of ``length`` cells along the axis."""
        size = list(self.cp.dom)
        size[self.ax] = length
        return torch.zeros((self.cp.shots, self.sides, *size), dtype=self.cp.dtype,
                           device=self.cp.device)

    def sub(self, stored: Tensor, start: int, length: int) -> Tensor:
        """Cells ``[start, start + length)`` along the axis of a strip tensor."""
        return stored.narrow(self.ax + 2, start, length)

    def pairs(self, stored: Tensor, start: int, length: int) -> Pairs:
        """``(+k, -k)`` shifted views of a strip tensor, cells ``[start, start + length)``."""
        return [(self.sub(stored, start + k, length), self.sub(stored, start - k, length))
                for k in range(1, self.h + 1)]

    def sides_of(self, t: Tensor, start: int, length: int, pad: int) -> Tensor:
        """Both sides' cells of a padded ``[S, *(D + 2 pad)]`` field, in one strided view.

        Along the axis: padded cells ``[l0 + start, l0 + start + length)`` of each side.
        """
        base = _cut(t, self.ax, self.starts[0] + start, length, self.cp.dom, pad)
        size = (base.shape[0], self.sides, *base.shape[1:])
        stride = (base.stride(0), self.gap * t.stride(self.ax + 1), *base.stride()[1:])
        return base.as_strided(size, stride, base.storage_offset())

    def u_views(self, u_pad: Tensor) -> tuple[Tensor, Pairs]:
        """Centre and ``(+k, -k)`` views of the padded field on both sides' layers."""
        key = id(u_pad)
        if key not in self._u:
            h = self.h
            centre = self.sides_of(u_pad, h, self.nl, h)
            pairs = [(self.sides_of(u_pad, h + k, self.nl, h),
                      self.sides_of(u_pad, h - k, self.nl, h)) for k in range(1, h + 1)]
            self._u[key] = (centre, pairs)
        return self._u[key]

    def add_into(self, strip: Tensor, out: Tensor) -> None:
        """``out += strip`` on the domain cells of each side's strip (``out`` unpadded)."""
        for side, (d0, j0, m) in enumerate(self.parts):
            out.narrow(self.ax + 1, d0, m).add_(strip[:, side].narrow(self.ax + 1, j0, m))

    def adjoint_setup(self) -> None:
        """Zero adjoint memory variables ``mu``/``nu`` and strip scratch."""
        h, nl = self.h, self.nl
        self.mu, self.nu = self.field(nl), self.field(nl)
        self.z_pad, self.tw_pad, self.tg_pad = (self.field(nl + 4 * h) for _ in range(3))
        self.z, self.tg = self.sub(self.z_pad, 2 * h, nl), self.sub(self.tg_pad, 2 * h, nl)
        self.tw_strip = self.sub(self.tw_pad, h, self.ns)
        self.tw_layer = self.sub(self.tw_pad, 2 * h, nl)
        self.tw_pairs = self.pairs(self.tw_pad, 2 * h, nl)
        self.z_centre = self.sub(self.z_pad, h, self.ns)
        self.z_pairs = self.pairs(self.z_pad, h, self.ns)
        self.tg_pairs = self.pairs(self.tg_pad, h, self.ns)
        self.r = self.field(self.ns)
        self._lbar: dict[int, tuple[Tensor, Tensor]] = {}

    def lbar_views(self, lbar_pad: Tensor) -> tuple[Tensor, Tensor]:
        """Both sides' layer and strip cells of the padded adjoint source."""
        key = id(lbar_pad)
        if key not in self._lbar:
            h = self.h
            self._lbar[key] = (self.sides_of(lbar_pad, h, self.nl, h),
                               self.sides_of(lbar_pad, 0, self.ns, h))
        return self._lbar[key]


class CPML:
    """Memory variables, coefficients and strip views of one call's CPML.

    Args:
        dom: Domain shape (interior plus layer).
        halo: Stencil half-width ``h``.
        order: Spatial accuracy order.
        dx: Grid spacing (m).
        dt: Time step (s).
        pml: Layer width in cells.
        vmax: Velocity for the layer's strength.
        freq: Frequency (Hz) of the ``alpha`` profile.
        shots: Batch size.
        dtype: Field dtype.
        device: Field device.
        d2: Centred second-derivative coefficients ``(c_0, ..., c_h)`` (unscaled).
    """

    def __init__(
        self, dom: tuple[int, ...], halo: int, order: int, dx: float, dt: float, pml: int,
        vmax: float, freq: float, shots: int, dtype: torch.dtype, device: torch.device,
        d2: tuple[float, ...],
    ) -> None:
        self.dom, self.h, self.ndim = dom, halo, len(dom)
        self.shots, self.dtype, self.device = shots, dtype, device
        self.d1 = [c / dx for c in FIRST[order]]
        self.d2 = [c / dx**2 for c in d2]
        self.axes: list[_Axis] = []
        for ax, n in enumerate(dom):
            starts, nl = layers(n, pml, halo)
            if starts:
                a, b = cpml_profiles(n, pml, dx, dt, vmax, freq)
                self.axes.append(_Axis(self, ax, starts, nl, a, b))

    @property
    def state(self) -> list[Tensor]:
        """The memory variables that belong to the time-stepping state (layer cells)."""
        return [s.psi for s in self.axes] + [s.zeta for s in self.axes]

    def reset(self) -> None:
        for s in self.axes:
            s.psi_pad.zero_()
            s.zeta.zero_()

    def first(self, pairs: Pairs, out: Tensor, scale: float = 1.0,
              accumulate: bool = False) -> None:
        """``out (+)= scale * D1 x`` from ``x``'s shifted views."""
        for k, (dk, (plus, minus)) in enumerate(zip(self.d1, pairs)):
            if k == 0 and not accumulate:
                torch.mul(plus, scale * dk, out=out)
            else:
                out.add_(plus, alpha=scale * dk)
            out.add_(minus, alpha=-scale * dk)

    def second(self, centre: Tensor, pairs: Pairs, out: Tensor, accumulate: bool) -> None:
        """``out (+)= D2 x`` from ``x``'s centre and shifted views."""
        if accumulate:
            out.add_(centre, alpha=self.d2[0])
        else:
            torch.mul(centre, self.d2[0], out=out)
        for ck, (plus, minus) in zip(self.d2[1:], pairs):
            out.add_(plus, alpha=ck)
            out.add_(minus, alpha=ck)

    def correct(self, u_pad: Tensor, out: Tensor) -> Tensor:
        """``out += sum_a E_a`` on the strips (``out = L u`` on entry: ``L_pml u`` on exit).

        Advances ``psi``/``zeta`` to the current step.
        """
        for s in self.axes:
            centre, pairs = s.u_views(u_pad)
            self.first(pairs, s.g)
            s.psi.mul_(s.a).addcmul_(s.b, s.g)
            self.first(s.psi_pairs, s.e)  # D1 psi on the strips
            self.second(centre, pairs, s.w, accumulate=False)
            s.w.add_(s.e_layer)
            s.zeta.mul_(s.a).addcmul_(s.b, s.w)
            s.e_layer.add_(s.zeta)
            s.add_into(s.e, out)
        return out

    # ----------------------------------------------------------------- adjoint
    def adjoint_setup(self) -> None:
        """Allocate the adjoint memory variables and strip scratch (all zero)."""
        for s in self.axes:
            s.adjoint_setup()

    def adjoint_terms(self, lbar_pad: Tensor, new: Tensor) -> None:
        """``new += (L_pml^T - L) lbar`` for one reversed step (``lbar = C m lambda_{k+1}``).

        ``lbar_pad`` holds ``lbar`` with a zero halo of ``h`` cells. Updates the memory
        adjoints ``mu`` (of ``psi``) and ``nu`` (of ``zeta``) from step ``k`` to step
        ``k - 1``. The plain ``L lbar`` is the caller's.
        """
        for s in self.axes:
            lbar_layer, lbar_strip = s.lbar_views(lbar_pad)
            s.nu.add_(lbar_layer)  # adjoint of zeta^k, total
            torch.mul(s.nu, s.b, out=s.z)  # B nu
            s.tw_strip.copy_(lbar_strip)
            s.tw_layer.add_(s.z)  # adjoint of w: lbar + B nu
            self.first(s.tw_pairs, s.mu, scale=-1.0, accumulate=True)  # D1^T = -D1
            torch.mul(s.mu, s.b, out=s.tg)  # adjoint of D1 u
            self.second(s.z_centre, s.z_pairs, s.r, accumulate=False)
            self.first(s.tg_pairs, s.r, scale=-1.0, accumulate=True)
            s.add_into(s.r, new)
            s.nu.mul_(s.a)
            s.mu.mul_(s.a)
