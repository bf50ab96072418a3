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
``h``. Hence ``L_pml u = L u + sum_a E_a``, with ``L`` the plain Laplacian over the whole
domain and the correction ``E_a = D1 psi_a + zeta_a`` living only in the two *strips* of
axis ``a`` (layer plus ``h`` cells inwards). Memory variables, their updates and the
adjoint's are computed and stored on those strips only. ``D1`` is antisymmetric and ``D2``
symmetric (fields vanish outside the domain), which gives the adjoint: with ``lbar`` the
adjoint of ``L_pml u`` and ``mu``/``nu`` those of ``psi``/``zeta``,

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


def strips(n: int, pml: int, halo: int) -> list[tuple[int, int, int, int]]:
    """The strips ``(s0, s1, l0, l1)`` of an axis of ``n`` cells: strip and layer ranges.

    Two strips (low and high side) of ``pml + halo`` cells, or one covering the axis when
    they would meet; none without a layer.
    """
    if pml == 0:
        return []
    if 2 * (pml + halo) > n:
        return [(0, n, 0, n)]
    return [(0, pml + halo, 0, pml), (n - pml - halo, n, n - pml, n)]


Pairs = list[tuple[Tensor, Tensor]]


def _cut(t: Tensor, ax: int, start: int, length: int, dom: tuple[int, ...], pad: int) -> Tensor:
    """``t`` narrowed along spatial axis ``ax``, and to its interior on the others.

    Along ``ax``: cells ``[start, start + length)``; along the others ``[pad, pad + n)``
    (``pad = 0``: ``t`` is not padded there).
    """
    for b, n in enumerate(dom):
        if b == ax:
            t = t.narrow(b + 1, start, length)
        elif pad:
            t = t.narrow(b + 1, pad, n)
    return t


class _Strip:
    """One strip of axis ``ax``: its coefficients, memory variables and scratch.

    Strip storage (``psi_pad`` and the adjoint's padded scratch) spans cells ``[s0 - h,
    s1 + h)`` along ``ax`` and the whole domain along the other axes; it is zero outside
    the layer.
    """

    def __init__(self, cp: CPML, ax: int, rng: tuple[int, int, int, int], a: Tensor,
                 b: Tensor) -> None:
        s0, s1, l0, l1 = rng
        self.cp, self.ax = cp, ax
        self.s0, self.ns, self.l0, self.nl = s0, s1 - s0, l0, l1 - l0
        self.off = l0 - s0 + cp.h  # the layer's first cell in strip storage
        shape = [1] * (cp.ndim + 1)
        shape[ax + 1] = self.nl
        self.a = a[l0:l1].to(device=cp.device, dtype=cp.dtype).view(shape)
        self.b = b[l0:l1].to(device=cp.device, dtype=cp.dtype).view(shape)
        self.psi_pad = self.field(self.ns + 2 * cp.h)
        self.psi = self.layer(self.psi_pad)
        self.zeta = self.field(self.nl)
        self.g, self.w, self.e = self.field(self.nl), self.field(self.nl), self.field(self.ns)
        self.e_layer = self.e.narrow(ax + 1, l0 - s0, self.nl)
        self.psi_pairs = self.pairs(self.psi_pad, cp.h, self.ns)
        self._u: dict[int, tuple[Tensor, Pairs]] = {}

    def field(self, length: int) -> Tensor:
        """A zero ``[S, ...]`` tensor of ``length`` cells along the strip's axis."""
        size = list(self.cp.dom)
        size[self.ax] = length
        return torch.zeros((self.cp.shots, *size), dtype=self.cp.dtype, device=self.cp.device)

    def layer(self, stored: Tensor) -> Tensor:
        """The layer cells of a strip-storage tensor."""
        return stored.narrow(self.ax + 1, self.off, self.nl)

    def pairs(self, stored: Tensor, start: int, length: int) -> Pairs:
        """``(+k, -k)`` shifted views of strip storage, cells ``[start, start + length)``."""
        ax = self.ax + 1
        return [(stored.narrow(ax, start + k, length), stored.narrow(ax, start - k, length))
                for k in range(1, self.cp.h + 1)]

    def u_views(self, u_pad: Tensor) -> tuple[Tensor, Pairs]:
        """Centre and ``(+k, -k)`` views of the padded field on the layer cells."""
        key = id(u_pad)
        if key not in self._u:
            cp, h = self.cp, self.cp.h
            start = self.l0 + h
            centre = _cut(u_pad, self.ax, start, self.nl, cp.dom, h)
            pairs = [(_cut(u_pad, self.ax, start + k, self.nl, cp.dom, h),
                      _cut(u_pad, self.ax, start - k, self.nl, cp.dom, h))
                     for k in range(1, h + 1)]
            self._u[key] = (centre, pairs)
        return self._u[key]

    def of_domain(self, t: Tensor, layer: bool) -> Tensor:
        """The strip's (or its layer's) cells of an unpadded ``[S, *D]`` tensor."""
        if layer:
            return t.narrow(self.ax + 1, self.l0, self.nl)
        return t.narrow(self.ax + 1, self.s0, self.ns)

    # ----------------------------------------------------------------- adjoint
    def adjoint_setup(self) -> None:
        """Zero adjoint memory variables ``mu``/``nu`` and strip-storage scratch."""
        h = self.cp.h
        self.mu, self.nu = self.field(self.nl), self.field(self.nl)
        self.z_pad, self.tw_pad, self.tg_pad = (self.field(self.ns + 2 * h)
                                                for _ in range(3))
        self.z, self.tg = self.layer(self.z_pad), self.layer(self.tg_pad)
        self.tw_strip = self.tw_pad.narrow(self.ax + 1, h, self.ns)
        self.tw_layer = self.layer(self.tw_pad)
        self.tw_pairs = self.pairs(self.tw_pad, self.off, self.nl)
        self.z_centre = self.z_pad.narrow(self.ax + 1, h, self.ns)
        self.z_pairs = self.pairs(self.z_pad, h, self.ns)
        self.tg_pairs = self.pairs(self.tg_pad, h, self.ns)


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
        self.strips: list[_Strip] = []
        for ax, n in enumerate(dom):
            a, b = cpml_profiles(n, pml, dx, dt, vmax, freq)
            self.strips += [_Strip(self, ax, rng, a, b) for rng in strips(n, pml, halo)]

    @property
    def state(self) -> list[Tensor]:
        """The memory variables that belong to the time-stepping state (layer cells)."""
        return [s.psi for s in self.strips] + [s.zeta for s in self.strips]

    def reset(self) -> None:
        for s in self.strips:
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
        for s in self.strips:
            centre, pairs = s.u_views(u_pad)
            self.first(pairs, s.g)
            s.psi.mul_(s.a).addcmul_(s.b, s.g)
            self.first(s.psi_pairs, s.e)  # D1 psi on the strip
            self.second(centre, pairs, s.w, accumulate=False)
            s.w.add_(s.e_layer)
            s.zeta.mul_(s.a).addcmul_(s.b, s.w)
            s.of_domain(out, False).add_(s.e)
            s.of_domain(out, True).add_(s.zeta)
        return out

    # ----------------------------------------------------------------- adjoint
    def adjoint_setup(self) -> None:
        """Allocate the adjoint memory variables and strip scratch (all zero)."""
        for s in self.strips:
            s.adjoint_setup()

    def adjoint_terms(self, lbar: Tensor, new: Tensor) -> None:
        """``new += (L_pml^T - L) lbar`` for one reversed step (``lbar = C m lambda_{k+1}``).

        Updates the memory adjoints ``mu`` (of ``psi``) and ``nu`` (of ``zeta``) from step
        ``k`` to step ``k - 1``. The plain ``L lbar`` is the caller's.
        """
        for s in self.strips:
            lbar_layer = s.of_domain(lbar, True)
            s.nu.add_(lbar_layer)  # adjoint of zeta^k, total
            torch.mul(s.nu, s.b, out=s.z)  # B nu
            s.tw_strip.copy_(s.of_domain(lbar, False))
            s.tw_layer.add_(s.z)  # adjoint of w: lbar + B nu
            self.first(s.tw_pairs, s.mu, scale=-1.0, accumulate=True)  # D1^T = -D1
            torch.mul(s.mu, s.b, out=s.tg)  # adjoint of D1 u
            target = s.of_domain(new, False)
            self.second(s.z_centre, s.z_pairs, target, accumulate=True)
            self.first(s.tg_pairs, target, scale=-1.0, accumulate=True)
            s.nu.mul_(s.a)
            s.mu.mul_(s.a)
