"""Convolutional PML for the second-order scalar wave equation, with its exact adjoint.

Per axis ``a`` (Pasalic & McGarry 2010, the form Deepwave uses), with ``D1``/``D2`` the
centred first/second differences along ``a`` and memory variables ``psi_a``, ``zeta_a``:

    psi_a^n  = A_a psi_a^{n-1} + B_a D1 u_n
    w_a      = D2 u_n + D1 psi_a^n
    zeta_a^n = A_a zeta_a^{n-1} + B_a w_a
    L_pml u_n = sum_a (w_a + zeta_a^n)

with ``A = exp(-(sigma + alpha) dt)``, ``B = sigma / (sigma + alpha) (A - 1)`` inside the
layer of axis ``a`` and ``A = B = 0`` outside it (so ``psi`` and ``zeta`` stay exactly zero
there). ``L_pml`` replaces the Laplacian in the leapfrog update. ``D1`` is antisymmetric and
``D2`` symmetric (fields are zero outside the domain), which gives the adjoint below.
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

Views = tuple[Tensor, list[tuple[Tensor, Tensor]]]


def cpml_profiles(
    n: int, pml: int, dx: float, dt: float, vmax: float, freq: float,
    reflection: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """1-D ``(A, B)`` profiles (float64) for an axis of ``n`` domain cells."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.clamp(torch.maximum(pml - i, i - (n - 1 - pml)), min=0) / max(pml, 1)
    sigma = 3.0 * vmax * math.log(1.0 / reflection) / (2.0 * max(pml, 1) * dx) * d**2
    alpha = math.pi * freq * (1 - d)
    a = torch.exp(-(sigma + alpha) * dt)
    inside = sigma > 0
    b = torch.where(inside, sigma / (sigma + alpha) * (a - 1), torch.zeros_like(a))
    return torch.where(inside, a, torch.zeros_like(a)), b


class CPML:
    """Memory variables, coefficients and stencil views of one call's CPML."""

    def __init__(
        self, dom: tuple[int, ...], halo: int, order: int, dx: float, dt: float, pml: int,
        vmax: float, freq: float, shots: int, dtype: torch.dtype, device: torch.device,
        d2: tuple[float, ...],
    ) -> None:
        self.dom, self.h, self.ndim = dom, halo, len(dom)
        self.d1 = [c / dx for c in FIRST[order]]
        self.d2 = [c / dx**2 for c in d2]
        self.a, self.b = [], []
        for ax, n in enumerate(dom):
            a, b = cpml_profiles(n, pml, dx, dt, vmax, freq)
            shape = [1] * (self.ndim + 1)
            shape[ax + 1] = n
            self.a.append(a.to(device=device, dtype=dtype).view(shape))
            self.b.append(b.to(device=device, dtype=dtype).view(shape))
        pad = tuple(n + 2 * halo for n in dom)
        self.inner_index = (slice(None),) + tuple(slice(halo, halo + n) for n in dom)
        self.psi_pad = [torch.zeros((shots, *pad), dtype=dtype, device=device)
                        for _ in dom]
        self.psi = [p[self.inner_index] for p in self.psi_pad]
        self.zeta = [torch.zeros((shots, *dom), dtype=dtype, device=device) for _ in dom]
        self.g = torch.empty((shots, *dom), dtype=dtype, device=device)
        self.w = torch.empty((shots, *dom), dtype=dtype, device=device)
        self.pad = pad
        self._views: dict[tuple[int, int], Views] = {}

    @property
    def state(self) -> list[Tensor]:
        """The memory variables that belong to the time-stepping state."""
        return self.psi + self.zeta

    def reset(self) -> None:
        for t in self.psi_pad + self.zeta:
            t.zero_()

    def views(self, buf: Tensor, ax: int) -> Views:
        """Centre and ``(+k, -k)`` shifted views of padded ``buf`` along axis ``ax``."""
        key = (id(buf), ax)
        if key not in self._views:
            h = self.h
            centre = buf[self.inner_index]
            pairs = []
            for k in range(1, h + 1):
                plus, minus = list(self.inner_index), list(self.inner_index)
                plus[ax + 1] = slice(h + k, h + k + self.dom[ax])
                minus[ax + 1] = slice(h - k, h - k + self.dom[ax])
                pairs.append((buf[tuple(plus)], buf[tuple(minus)]))
            self._views[key] = (centre, pairs)
        return self._views[key]

    def first(self, v: Views, out: Tensor, scale: float = 1.0, accumulate: bool = False) -> None:
        """``out (+)= scale * D1 x`` from ``x``'s views."""
        for k, (dk, (plus, minus)) in enumerate(zip(self.d1, v[1])):
            if k == 0 and not accumulate:
                torch.mul(plus, scale * dk, out=out)
            else:
                out.add_(plus, alpha=scale * dk)
            out.add_(minus, alpha=-scale * dk)

    def second(self, v: Views, out: Tensor, accumulate: bool = False) -> None:
        """``out (+)= D2 x`` from ``x``'s views."""
        if accumulate:
            out.add_(v[0], alpha=self.d2[0])
        else:
            torch.mul(v[0], self.d2[0], out=out)
        for ck, (plus, minus) in zip(self.d2[1:], v[1]):
            out.add_(plus, alpha=ck)
            out.add_(minus, alpha=ck)

    def laplacian(self, u_pad: Tensor, out: Tensor) -> Tensor:
        """``out = L_pml u``; advances ``psi``/``zeta`` to the current step."""
        for ax in range(self.ndim):
            uv = self.views(u_pad, ax)
            self.first(uv, self.g)
            self.psi[ax].mul_(self.a[ax]).addcmul_(self.b[ax], self.g)
            self.second(uv, self.w)
            self.first(self.views(self.psi_pad[ax], ax), self.w, accumulate=True)
            self.zeta[ax].mul_(self.a[ax]).addcmul_(self.b[ax], self.w)
            if ax == 0:
                torch.add(self.w, self.zeta[ax], out=out)
            else:
                out.add_(self.w).add_(self.zeta[ax])
        return out

    # ----------------------------------------------------------------- adjoint
    def adjoint_setup(self) -> None:
        """Allocate the adjoint memory variables and padded scratch (all zero)."""
        self.mu = [torch.zeros_like(self.g) for _ in self.dom]
        self.nu = [torch.zeros_like(self.g) for _ in self.dom]
        self.tw = self.g.new_zeros((self.g.shape[0], *self.pad))
        self.tg = self.g.new_zeros((self.g.shape[0], *self.pad))
        self.tw_in, self.tg_in = self.tw[self.inner_index], self.tg[self.inner_index]

    def adjoint_terms(self, lbar: Tensor, new: Tensor) -> None:
        """``new += L_pml^T``-part of one reversed step, given ``lbar = m lambda_{k+1}``.

        Updates the memory adjoints ``mu`` (of ``psi``) and ``nu`` (of ``zeta``) from step
        ``k`` to step ``k - 1``.
        """
        for ax in range(self.ndim):
            nu, mu = self.nu[ax], self.mu[ax]
            nu.add_(lbar)  # adjoint of zeta^k, total
            torch.addcmul(lbar, self.b[ax], nu, out=self.tw_in)  # adjoint of w
            twv = self.views(self.tw, ax)
            self.first(twv, mu, scale=-1.0, accumulate=True)  # adjoint of psi^k: D1^T = -D1
            torch.mul(mu, self.b[ax], out=self.tg_in)  # adjoint of D1 u
            self.second(twv, new, accumulate=True)
            self.first(self.views(self.tg, ax), new, scale=-1.0, accumulate=True)
            nu.mul_(self.a[ax])
            mu.mul_(self.a[ax])
